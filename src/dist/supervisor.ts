// The rank supervisor: the megamoe process starts one OS process per rank (node:child_process.fork of
// rank-entry.ts), gives each its identity (rank.ts) and device, serves the control channel (protocol.ts: phases,
// named barriers, published blobs) and watches for failure. The first failure wins and is the ONE message the user
// sees: a rank that exits or is killed before finishing, reports an error (a GuardError, a CudaError ...), misses a
// barrier / never publishes a blob past its deadline, or the whole run past its deadline, or the supervisor itself
// getting SIGINT/SIGTERM/SIGHUP. Then every live rank is told to abort, SIGTERMed after a grace period and
// SIGKILLed after another, each by its process group (a rank is a group leader: detached), and the promise rejects
// with a RankFailureError naming the rank and the phase once every child has exited. No orphan survives: children
// are killed by pid on the way out, and a rank whose IPC channel closes (the supervisor died, even by SIGKILL)
// exits by itself (rank-channel.ts).
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { isAbsolute, resolve } from 'node:path';
import { assignDevices, rankEnv, RANK_ENV } from './rank.js';
import { checkKey, parseRankMessage, type SupervisorMessage } from './protocol.js';

export type RankFailureKind = 'exit' | 'error' | 'deadline' | 'signal' | 'protocol';

/** The one error of a failed run: which rank, in which phase, and what happened. */
export class RankFailureError extends Error {
  /** The failing rank (-1 when the failure is the supervisor's: a signal, the run deadline with no single culprit). */
  readonly rank: number;
  readonly phase: string;
  readonly kind: RankFailureKind;
  /** The rank's error name when it reported one (e.g. 'GuardError'). */
  readonly errorName?: string;
  constructor(rank: number, phase: string, kind: RankFailureKind, message: string, errorName?: string) {
    super(message);
    this.name = 'RankFailureError';
    this.rank = rank;
    this.phase = phase;
    this.kind = kind;
    if (errorName) this.errorName = errorName;
  }
}

export interface SupervisorOptions {
  worldSize: number;
  /** The rank program: a module path or file URL whose default export is `(ctx: RankContext) => Promise<unknown>`. */
  program: string | URL;
  /** JSON-serialisable arguments handed to every rank as ctx.args. */
  args?: unknown;
  /** Device per rank (rank-to-device map, or one device for all ranks); default rank i on device i. */
  devices?: readonly number[];
  /** A rank must say hello within this (ms; default 30 000: node start plus imports). */
  startupTimeoutMs?: number;
  /** A barrier / a fetched key must complete within this after its first arrival / request (ms; default 120 000). */
  barrierTimeoutMs?: number;
  /** The whole run (ms; default none). */
  timeoutMs?: number;
  /** After a failure: ms between the abort message and SIGTERM, and between SIGTERM and SIGKILL (default 2000). */
  killGraceMs?: number;
  /** Extra environment for every rank. */
  env?: Record<string, string>;
  /** Receives the ranks' stdout/stderr when given (then piped); otherwise the ranks inherit the supervisor's. */
  onOutput?: (rank: number, stream: 'stdout' | 'stderr', chunk: Buffer) => void;
  /** Called when a barrier completes (e.g. 'ready': every rank compiled and loaded). */
  onBarrier?: (name: string) => void;
  /** Called with each rank's pid once it is started. */
  onSpawn?: (rank: number, pid: number) => void;
  /** Install SIGINT/SIGTERM/SIGHUP handlers that stop the ranks, then re-raise (default true). */
  handleSignals?: boolean;
}

export interface RunResult {
  /** What each rank's program returned (JSON round trip). */
  results: unknown[];
  elapsedMs: number;
}

interface RankState {
  rank: number;
  device: number;
  child: ChildProcess;
  pid: number;
  phase: string;
  hello: boolean;
  done: boolean;
  result?: unknown;
  exited: boolean;
  exitDescription?: string;
}

const ENTRY = fileURLToPath(new URL('./rank-entry.js', import.meta.url));

function programUrl(p: string | URL): string {
  if (p instanceof URL) return p.href;
  if (p.startsWith('file:')) return p;
  return pathToFileURL(isAbsolute(p) ? p : resolve(p)).href;
}

/** Not yet exited (and reaped) as far as node knows. */
function running(child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/** Sends `signal` to the process group of `pid` (a rank is its group's leader), falling back to the pid alone. */
function killTree(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
    return;
  } catch { /* no group: the leader is gone or never became one */ }
  try {
    process.kill(pid, signal);
  } catch { /* already gone */ }
}

/**
 * Starts `worldSize` ranks, serves their control channel until every rank finished, and resolves with their results;
 * rejects with one RankFailureError on the first failure, after every rank has exited.
 */
export function runRanks(options: SupervisorOptions): Promise<RunResult> {
  const worldSize = options.worldSize;
  let devices: number[];
  try {
    devices = assignDevices(worldSize, options.devices);
  } catch (err) {
    return Promise.reject(err);
  }
  const startupTimeoutMs = options.startupTimeoutMs ?? 30_000;
  const barrierTimeoutMs = options.barrierTimeoutMs ?? 120_000;
  const killGraceMs = options.killGraceMs ?? 2000;
  const started = Date.now();
  const url = programUrl(options.program);
  const argsJson = JSON.stringify(options.args ?? null);

  return new Promise<RunResult>((resolvePromise, rejectPromise) => {
    const ranks: RankState[] = [];
    const barriers = new Map<string, { arrived: Set<number>; timer: NodeJS.Timeout }>();
    const blobs = new Map<string, string>();
    const waiting = new Map<string, { ranks: Set<number>; timer: NodeJS.Timeout }>();
    const exchanges = new Map<string, { data: Map<number, string>; timer: NodeJS.Timeout }>();
    const timers = new Set<NodeJS.Timeout>();
    let failure: RankFailureError | null = null;
    let settled = false;
    /** A signal the supervisor got: re-raised (default disposition) once every rank is gone and the error is out. */
    let pendingSignal: NodeJS.Signals | null = null;

    const later = (ms: number, fn: () => void): NodeJS.Timeout => {
      const t = setTimeout(() => { timers.delete(t); fn(); }, ms);
      timers.add(t);
      return t;
    };
    const send = (r: RankState, m: SupervisorMessage) => {
      if (r.exited || !r.child.connected) return;
      try { r.child.send(m); } catch { /* the channel closed under us: its exit is reported separately */ }
    };
    const phasesOf = (which: RankState[]) => which.map((r) => `rank ${r.rank} in '${r.phase}'`).join(', ');
    // The deadline of a collective (barrier, exchange) that rank `r` opened: names the first rank that has not joined.
    const collectiveDeadline = (what: string, joined: (rank: number) => boolean, r: RankState) =>
      later(barrierTimeoutMs, () => {
        const missing = ranks.filter((x) => !joined(x.rank));
        const first = missing[0] ?? r;
        fail(new RankFailureError(first.rank, first.phase, 'deadline',
          `rank ${first.rank} did not ${what} within ${barrierTimeoutMs} ms of the first rank ` +
          `(phase '${first.phase}'; missing: ${phasesOf(missing)})`));
      });

    const finishIfAllExited = () => {
      if (settled || !ranks.every((r) => r.exited)) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      uninstallSignals();
      process.removeListener('exit', onProcessExit);
      if (pendingSignal) {
        const sig = pendingSignal;
        // After the rejection's handlers ran (they may print the message, or exit themselves).
        setTimeout(() => process.kill(process.pid, sig), 0);
      }
      if (failure) rejectPromise(failure);
      else resolvePromise({ results: ranks.map((r) => r.result), elapsedMs: Date.now() - started });
    };

    const fail = (f: RankFailureError) => {
      if (failure) return;
      failure = f;
      for (const r of ranks) send(r, { t: 'abort', message: f.message });
      const live = () => ranks.filter((r) => !r.exited);
      later(killGraceMs, () => {
        for (const r of live()) killTree(r.pid, 'SIGTERM');
        later(killGraceMs, () => { for (const r of live()) killTree(r.pid, 'SIGKILL'); });
      });
      finishIfAllExited();
    };

    // --- signals and process exit: never leave a child behind
    const signalHandlers: Array<[NodeJS.Signals, () => void]> = [];
    const onProcessExit = () => {
      for (const r of ranks) if (!r.exited) killTree(r.pid, 'SIGKILL');
    };
    process.on('exit', onProcessExit);
    function uninstallSignals() {
      for (const [sig, h] of signalHandlers) process.removeListener(sig, h);
      signalHandlers.length = 0;
    }
    if (options.handleSignals !== false) {
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
        const h = () => {
          // Synchronously first: even if something else ends this process right after, every rank got SIGTERM.
          for (const r of ranks) if (!r.exited) killTree(r.pid, 'SIGTERM');
          fail(new RankFailureError(-1, 'supervisor', 'signal', `the rank supervisor received ${sig}: stopping all ${worldSize} ranks`));
          pendingSignal ??= sig;
          later(killGraceMs, () => { for (const r of ranks) if (!r.exited) killTree(r.pid, 'SIGKILL'); });
        };
        signalHandlers.push([sig, h]);
        process.on(sig, h);
      }
    }

    // --- control channel
    const completeBarrier = (name: string) => {
      const b = barriers.get(name);
      if (!b) return;
      clearTimeout(b.timer);
      timers.delete(b.timer);
      barriers.delete(name);
      options.onBarrier?.(name);
      for (const r of ranks) send(r, { t: 'barrier-ok', name });
    };

    const onMessage = (r: RankState, raw: unknown) => {
      if (failure) return;
      const m = parseRankMessage(raw);
      if (!m) {
        fail(new RankFailureError(r.rank, r.phase, 'protocol', `rank ${r.rank} sent a malformed control message in phase '${r.phase}': ${JSON.stringify(raw).slice(0, 200)}`));
        return;
      }
      switch (m.t) {
        case 'hello':
          if (m.rank !== r.rank) {
            fail(new RankFailureError(r.rank, r.phase, 'protocol', `rank ${r.rank} says it is rank ${m.rank}`));
            return;
          }
          r.hello = true;
          return;
        case 'phase':
          r.phase = m.name;
          return;
        case 'barrier': {
          let b = barriers.get(m.name);
          if (!b) {
            const name = m.name;
            b = {
              arrived: new Set(),
              timer: collectiveDeadline(`reach barrier '${name}'`, (rank) => barriers.get(name)?.arrived.has(rank) ?? false, r),
            };
            barriers.set(m.name, b);
          }
          b.arrived.add(r.rank);
          if (b.arrived.size === worldSize) completeBarrier(m.name);
          return;
        }
        case 'put': {
          if (blobs.has(m.key)) {
            fail(new RankFailureError(r.rank, r.phase, 'protocol', `rank ${r.rank} published '${m.key}' twice (phase '${r.phase}')`));
            return;
          }
          blobs.set(m.key, m.data);
          const w = waiting.get(m.key);
          if (w) {
            clearTimeout(w.timer);
            timers.delete(w.timer);
            waiting.delete(m.key);
            for (const x of ranks) if (w.ranks.has(x.rank)) send(x, { t: 'value', key: m.key, data: m.data });
          }
          return;
        }
        case 'get': {
          const data = blobs.get(m.key);
          if (data !== undefined) {
            send(r, { t: 'value', key: m.key, data });
            return;
          }
          let w = waiting.get(m.key);
          if (!w) {
            const key = m.key;
            w = {
              ranks: new Set(),
              timer: later(barrierTimeoutMs, () => {
                fail(new RankFailureError(r.rank, r.phase, 'deadline',
                  `rank ${r.rank} waited ${barrierTimeoutMs} ms for '${key}', which no rank published ` +
                  `(phase '${r.phase}'; ranks: ${phasesOf(ranks.filter((x) => !x.exited))})`));
              }),
            };
            waiting.set(m.key, w);
          }
          w.ranks.add(r.rank);
          return;
        }
        case 'exchange': {
          let x = exchanges.get(m.key);
          if (!x) {
            const key = m.key;
            x = {
              data: new Map(),
              timer: collectiveDeadline(`join exchange '${key}'`, (rank) => exchanges.get(key)?.data.has(rank) ?? false, r),
            };
            exchanges.set(m.key, x);
          }
          if (x.data.has(r.rank)) {
            fail(new RankFailureError(r.rank, r.phase, 'protocol', `rank ${r.rank} joined exchange '${m.key}' twice (phase '${r.phase}')`));
            return;
          }
          x.data.set(r.rank, m.data);
          if (x.data.size === worldSize) {
            clearTimeout(x.timer);
            timers.delete(x.timer);
            exchanges.delete(m.key);
            const all = ranks.map((y) => x!.data.get(y.rank) as string);
            for (const y of ranks) send(y, { t: 'exchanged', key: m.key, data: all });
          }
          return;
        }
        case 'error':
          fail(new RankFailureError(r.rank, m.phase, 'error',
            `rank ${r.rank} failed in phase '${m.phase}': ${m.name}: ${m.message}`, m.name));
          return;
        case 'done':
          r.done = true;
          r.result = m.result;
          return;
      }
    };

    const onExit = (r: RankState, code: number | null, signal: NodeJS.Signals | null) => {
      r.exitDescription = signal ? `killed by ${signal}` : `exit code ${code}`;
      // Messages sent just before exit may still be in flight: decide after they had a chance to arrive.
      later(100, () => {
        r.exited = true;
        if (!failure && !(r.done && code === 0)) {
          const what = r.done ? `exited with ${r.exitDescription} after finishing` : `died (${r.exitDescription})`;
          fail(new RankFailureError(r.rank, r.phase, 'exit', `rank ${r.rank} ${what} in phase '${r.phase}' (pid ${r.pid})`));
        }
        finishIfAllExited();
      });
    };

    // --- start the ranks
    for (let rank = 0; rank < worldSize; rank++) {
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        ...options.env,
        ...rankEnv({ rank, worldSize, device: devices[rank] }),
        [RANK_ENV.program]: url,
        [RANK_ENV.args]: argsJson,
      };
      const pipe = options.onOutput !== undefined;
      const child = fork(ENTRY, [], {
        env,
        detached: true,
        execArgv: [],
        stdio: pipe ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'inherit', 'inherit', 'ipc'],
        serialization: 'json',
      });
      if (child.pid === undefined) {
        // fork failed synchronously (EAGAIN ...): the 'error' event below reports it.
      }
      const state: RankState = { rank, device: devices[rank], child, pid: child.pid ?? -1, phase: 'start', hello: false, done: false, exited: false };
      ranks.push(state);
      if (pipe) {
        child.stdout?.on('data', (c: Buffer) => options.onOutput?.(rank, 'stdout', c));
        child.stderr?.on('data', (c: Buffer) => options.onOutput?.(rank, 'stderr', c));
      }
      child.on('message', (m) => onMessage(state, m));
      child.on('exit', (code, signal) => onExit(state, code, signal));
      child.on('error', (err) => {
        if (state.pid < 0 && !state.exited) {
          state.exited = true;
          fail(new RankFailureError(rank, 'start', 'exit', `rank ${rank} could not be started: ${err.message}`));
          finishIfAllExited();
        }
      });
      if (state.pid > 0) options.onSpawn?.(rank, state.pid);
    }

    later(startupTimeoutMs, () => {
      const silent = ranks.filter((r) => !r.hello && !r.exited);
      if (silent.length > 0) {
        fail(new RankFailureError(silent[0].rank, 'start', 'deadline',
          `rank ${silent[0].rank} did not start within ${startupTimeoutMs} ms (silent: ${silent.map((r) => r.rank).join(', ')})`));
      }
    });
    if (options.timeoutMs !== undefined) {
      const timeoutMs = options.timeoutMs;
      later(timeoutMs, () => {
        const busy = ranks.filter((r) => !r.done && !r.exited);
        if (busy.length === 0) return;
        fail(new RankFailureError(busy[0].rank, busy[0].phase, 'deadline',
          `rank ${busy[0].rank} did not finish within the run deadline of ${timeoutMs} ms (phase '${busy[0].phase}'; ` +
          `unfinished: ${phasesOf(busy)})`));
      });
    }
  });
}

export { checkKey };
