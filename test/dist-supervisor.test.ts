// The rank supervisor (src/dist/supervisor.ts) and control channel, with real processes and no GPU: a world of 3
// that reaches the ready barrier and exchanges blobs; a rank killed mid-run, a rank that never answers, a rank
// that throws a GuardError, a rank that exits early; the supervisor itself getting SIGTERM or SIGKILL. Every failure
// must end every rank quickly with one message naming the rank and the phase, and leave no process behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runRanks, RankFailureError } from '../src/dist/supervisor.js';
import { uniqueIdBlob } from './support/dist-rank-program.js';

const program = new URL('./support/dist-rank-program.js', import.meta.url);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function waitDead(pids: number[], ms: number): Promise<number[]> {
  const end = Date.now() + ms;
  for (;;) {
    const live = pids.filter(alive);
    if (live.length === 0 || Date.now() > end) return live;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Waits for the pids to die; kills (and reports) any survivor so that a failing test never hangs the suite. */
async function assertAllDead(pids: number[], ms: number): Promise<void> {
  const live = await waitDead(pids, ms);
  for (const pid of live) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  assert.deepEqual(live, [], 'every rank pid is gone');
}

async function expectFailure(p: Promise<unknown>): Promise<RankFailureError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof RankFailureError, `expected a RankFailureError, got ${String(err)}`);
    return err;
  }
  assert.fail('the run should have failed');
}

test('a world of 3: identities, devices, the ready barrier, a published id and an all-gather of handles', async () => {
  const barriers: string[] = [];
  const pids: number[] = [];
  const r = await runRanks({
    worldSize: 3, program, args: { mode: 'exchange' }, devices: [0],
    onBarrier: (n) => barriers.push(n), onSpawn: (_rank, pid) => pids.push(pid),
  });
  assert.deepEqual(barriers, ['ready']);
  assert.equal(r.results.length, 3);
  const idHex = Buffer.from(uniqueIdBlob()).toString('hex');
  r.results.forEach((res, rank) => {
    const o = res as { rank: number; worldSize: number; device: number; pid: number; id: string; gathered: string[] };
    assert.equal(o.rank, rank);
    assert.equal(o.worldSize, 3);
    assert.equal(o.device, 0, 'the single-GPU mode puts every rank on device 0');
    assert.equal(o.pid, pids[rank]);
    assert.equal(o.id, idHex);
    assert.deepEqual(o.gathered, [0, 1, 2].map((q) => Buffer.from(Uint8Array.from({ length: 64 }, (_, i) => (q * 64 + i) & 0xff)).toString('hex')));
  });
  await assertAllDead(pids, 2000);
});

test('devices default to rank i on device i', async () => {
  const r = await runRanks({ worldSize: 2, program, args: { mode: 'exchange' } });
  assert.deepEqual(r.results.map((o) => (o as { device: number }).device), [0, 1]);
});

test('a rank killed mid-run ends every rank within 10 s with one message naming the rank and the phase', async () => {
  const pids: number[] = [];
  const t0 = Date.now();
  const err = await expectFailure(runRanks({
    worldSize: 3, program, args: { mode: 'wait-after-ready' }, onSpawn: (_r, pid) => pids.push(pid),
    onBarrier: (n) => {
      // After the ready barrier every rank sets phase 'compute' and waits for 'end': kill rank 1 there.
      if (n === 'ready') setTimeout(() => { try { process.kill(pids[1], 'SIGKILL'); } catch { /* checked below */ } }, 200);
    },
  }));
  assert.ok(Date.now() - t0 < 10_000);
  assert.equal(err.rank, 1);
  assert.equal(err.kind, 'exit');
  assert.equal(err.phase, 'compute');
  assert.match(err.message, /^rank 1 died \(killed by SIGKILL\) in phase 'compute'/);
  await assertAllDead(pids, 2000);
});

test('a rank that never reaches the barrier fails the run at the deadline, naming it and its phase', async () => {
  const pids: number[] = [];
  const t0 = Date.now();
  const err = await expectFailure(runRanks({
    worldSize: 3, program, args: { mode: 'hang-before-ready', victim: 2 }, barrierTimeoutMs: 1500, killGraceMs: 300,
    onSpawn: (_r, pid) => pids.push(pid),
  }));
  const took = Date.now() - t0;
  assert.ok(took >= 1400 && took < 10_000, `took ${took} ms`);
  assert.equal(err.rank, 2);
  assert.equal(err.kind, 'deadline');
  assert.equal(err.phase, 'load-weights');
  assert.match(err.message, /^rank 2 did not reach barrier 'ready' within 1500 ms of the first rank \(phase 'load-weights'/);
  await assertAllDead(pids, 2000);
});

test('a rank that never says hello fails the startup deadline', async () => {
  const err = await expectFailure(runRanks({
    worldSize: 2, program, args: { mode: 'exchange' }, startupTimeoutMs: 1, killGraceMs: 200,
  }));
  assert.equal(err.kind, 'deadline');
  assert.match(err.message, /did not start within 1 ms/);
});

test('a key that no rank publishes fails the fetching rank at the deadline', async () => {
  const err = await expectFailure(runRanks({
    worldSize: 2, program, args: { mode: 'fetch-missing', victim: 1 }, barrierTimeoutMs: 800, killGraceMs: 200,
  }));
  assert.equal(err.rank, 1);
  assert.equal(err.kind, 'deadline');
  assert.match(err.message, /^rank 1 waited 800 ms for 'nccl-unique-id', which no rank published \(phase 'nccl-init'/);
});

test('a rank that throws a GuardError stops every rank with its message and phase', async () => {
  const pids: number[] = [];
  const err = await expectFailure(runRanks({
    worldSize: 3, program, args: { mode: 'guard', victim: 1 }, killGraceMs: 300, onSpawn: (_r, pid) => pids.push(pid),
  }));
  assert.equal(err.rank, 1);
  assert.equal(err.kind, 'error');
  assert.equal(err.phase, 'prepare');
  assert.equal(err.errorName, 'GuardError');
  assert.match(err.message, /^rank 1 failed in phase 'prepare': GuardError: grouped GEMM: hidden 100 not a positive multiple of 128: use a preset shape$/);
  await assertAllDead(pids, 2000);
});

test('a rank that exits 0 without finishing is a failure too', async () => {
  const err = await expectFailure(runRanks({ worldSize: 2, program, args: { mode: 'exit-early', victim: 0 }, killGraceMs: 200 }));
  assert.equal(err.rank, 0);
  assert.match(err.message, /^rank 0 died \(exit code 0\) in phase 'compute'/);
});

const supervisorMain = fileURLToPath(new URL('./support/dist-supervisor-main.js', import.meta.url));

async function startSupervisor(): Promise<{ proc: ReturnType<typeof spawn>; pids: number[]; exited: Promise<[number | null, string | null]>; stderr: () => string }> {
  const proc = spawn(process.execPath, [supervisorMain, '--run'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
  const exited = new Promise<[number | null, string | null]>((res) => proc.on('exit', (c, s) => res([c, s])));
  const pids: number[] = [];
  let out = '';
  await new Promise<void>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`supervisor not ready: ${out}`)), 20_000);
    proc.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (/^ready$/m.test(out)) { clearTimeout(t); res(); }
    });
  });
  for (const m of out.matchAll(/^pid (\d+) (\d+)$/gm)) pids[Number(m[1])] = Number(m[2]);
  assert.equal(pids.filter((p) => p > 0).length, 3, out);
  return { proc, pids, exited, stderr: () => err };
}

test('the supervisor receiving SIGTERM leaves no rank behind (checked by pid)', async () => {
  const { proc, pids, exited, stderr } = await startSupervisor();
  assert.ok(pids.every(alive));
  proc.kill('SIGTERM');
  const [code, signal] = await exited;
  assert.ok(code !== 0 || signal !== null, `exit ${code} ${signal}`);
  // The supervisor's own handler stopped the ranks (not only their closed channels) and said why, once.
  assert.equal(stderr(), 'the rank supervisor received SIGTERM: stopping all 3 ranks\n');
  await assertAllDead(pids, 5000);
});

test('the supervisor SIGKILLed: the ranks notice the closed channel and exit by themselves', async () => {
  const { proc, pids, exited } = await startSupervisor();
  proc.kill('SIGKILL');
  await exited;
  await assertAllDead(pids, 5000);
});

test('exchange: a barrier with a payload, every rank gets all blobs in rank order, the key reusable once delivered', async () => {
  const pids: number[] = [];
  const r = await runRanks({ worldSize: 3, program, args: { mode: 'exchange-loop' }, onSpawn: (_r, pid) => pids.push(pid) });
  r.results.forEach((res, rank) => {
    const o = res as { rank: number; rounds: string[][]; empty: number[] };
    assert.equal(o.rank, rank);
    assert.equal(o.rounds.length, 20);
    o.rounds.forEach((round, i) => assert.deepEqual(round, [0, 1, 2].map((q) => Buffer.from([q, i, (q * i) & 0xff]).toString('hex'))));
    assert.deepEqual(o.empty, [0, 0, 0]);
  });
  await assertAllDead(pids, 2000);
});

test('exchange: a rank that never joins ends the run at the deadline, naming the rank, the phase and the key', async () => {
  const pids: number[] = [];
  const t0 = Date.now();
  const err = await expectFailure(runRanks({
    worldSize: 3, program, args: { mode: 'exchange-missing', victim: 2 }, barrierTimeoutMs: 1500, killGraceMs: 300,
    onSpawn: (_r, pid) => pids.push(pid),
  }));
  assert.equal(err.rank, 2);
  assert.equal(err.kind, 'deadline');
  assert.equal(err.phase, 'ipc-exchange');
  assert.match(err.message, /rank 2 did not join exchange 'ipc-transport:handles' within 1500 ms of the first rank \(phase 'ipc-exchange'; missing: rank 2 in 'ipc-exchange'\)/);
  assert.ok(Date.now() - t0 < 10_000);
  await assertAllDead(pids, 3000);
});
