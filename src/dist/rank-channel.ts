// The rank's end of the control channel (the supervisor's is supervisor.ts): phases, named barriers, blobs
// published under a key and fetched by any rank, all-gather of blobs (CUDA IPC handles), errors. Created once per
// rank process by rank-entry.ts and handed to the rank's program as its context.
//
// A rank never outlives its supervisor: when the IPC channel closes (the supervisor exited or was SIGKILLed) the
// rank exits at once, and an 'abort' from the supervisor (another rank failed) ends it quietly: the supervisor
// prints the one message.
import { checkKey, decodeBlob, encodeBlob, parseSupervisorMessage, type RankMessage } from './protocol.js';
import type { RankIdentity } from './rank.js';

/** Exit code of a rank that stopped because the supervisor told it to (another rank failed). */
export const ABORTED_EXIT_CODE = 3;
/** Exit code of a rank whose supervisor went away. */
export const ORPHANED_EXIT_CODE = 4;

export interface RankContext extends RankIdentity {
  /** The supervisor's `args`, JSON round trip. */
  readonly args: unknown;
  /** Names what this rank is doing now; a failure message names the last phase set. */
  phase(name: string): void;
  /** Resolves when every rank reached the barrier `name`. */
  barrier(name: string): Promise<void>;
  /** The host-side "all ranks compiled and loaded" barrier before the first launch. */
  ready(): Promise<void>;
  /** Publishes `blob` under `key` (once per key in a run). */
  publish(key: string, blob: Uint8Array): void;
  /** Resolves with the blob published under `key` by any rank (waits for it, under the supervisor's deadline). */
  fetch(key: string): Promise<Uint8Array>;
  /** Every rank's blob for `key`, by rank (each rank publishes `${key}@${rank}`). */
  allGather(key: string, blob: Uint8Array): Promise<Uint8Array[]>;
  /**
   * A barrier with a payload: resolves with every rank's blob for `key`, by rank, once all ranks gave theirs (under the
   * supervisor's barrier deadline). Unlike allGather, the supervisor forgets the key once delivered, so a key may be
   * reused after it resolved on every rank (the IPC transport exchanges a layout per collective).
   */
  exchange(key: string, blob: Uint8Array): Promise<Uint8Array[]>;
}

export class RankChannel implements RankContext {
  readonly rank: number;
  readonly worldSize: number;
  readonly device: number;
  readonly args: unknown;
  currentPhase = 'start';
  private readonly barrierWaiters = new Map<string, Array<() => void>>();
  private readonly blobWaiters = new Map<string, Array<(b: Uint8Array) => void>>();
  private readonly blobs = new Map<string, Uint8Array>();
  private readonly exchangeWaiters = new Map<string, (blobs: Uint8Array[]) => void>();

  constructor(id: RankIdentity, args: unknown) {
    if (typeof process.send !== 'function') {
      throw new Error('this process has no IPC channel: rank programs are started by the megamoe rank supervisor (src/dist/supervisor.ts)');
    }
    this.rank = id.rank;
    this.worldSize = id.worldSize;
    this.device = id.device;
    this.args = args;
    process.on('message', (raw) => this.onMessage(raw));
    process.on('disconnect', () => process.exit(ORPHANED_EXIT_CODE));
    this.send({ t: 'hello', rank: this.rank, pid: process.pid });
  }

  private send(m: RankMessage): void {
    if (!process.connected) process.exit(ORPHANED_EXIT_CODE);
    process.send!(m);
  }

  /** Sends a message and resolves once the channel has taken it (for the last message before exit). */
  sendAndFlush(m: RankMessage): Promise<void> {
    return new Promise((res) => {
      if (!process.connected) { res(); return; }
      process.send!(m, undefined, {}, () => res());
    });
  }

  private onMessage(raw: unknown): void {
    const m = parseSupervisorMessage(raw);
    if (!m) return;
    if (m.t === 'abort') {
      process.exit(ABORTED_EXIT_CODE);
    } else if (m.t === 'barrier-ok') {
      const ws = this.barrierWaiters.get(m.name) ?? [];
      this.barrierWaiters.delete(m.name);
      for (const w of ws) w();
    } else if (m.t === 'exchanged') {
      const w = this.exchangeWaiters.get(m.key);
      this.exchangeWaiters.delete(m.key);
      w?.(m.data.map(decodeBlob));
    } else {
      const blob = decodeBlob(m.data);
      this.blobs.set(m.key, blob);
      const ws = this.blobWaiters.get(m.key) ?? [];
      this.blobWaiters.delete(m.key);
      for (const w of ws) w(blob);
    }
  }

  phase(name: string): void {
    checkKey('phase', name);
    this.currentPhase = name;
    this.send({ t: 'phase', name });
  }

  barrier(name: string): Promise<void> {
    checkKey('barrier', name);
    if (this.barrierWaiters.has(name)) return Promise.reject(new Error(`barrier '${name}' is already being waited on`));
    return new Promise((res) => {
      this.barrierWaiters.set(name, [res]);
      this.send({ t: 'barrier', name });
    });
  }

  ready(): Promise<void> {
    return this.barrier('ready');
  }

  publish(key: string, blob: Uint8Array): void {
    checkKey('key', key);
    this.send({ t: 'put', key, data: encodeBlob(blob) });
  }

  fetch(key: string): Promise<Uint8Array> {
    checkKey('key', key);
    const have = this.blobs.get(key);
    if (have) return Promise.resolve(have);
    return new Promise((res) => {
      const ws = this.blobWaiters.get(key);
      if (ws) { ws.push(res); return; }
      this.blobWaiters.set(key, [res]);
      this.send({ t: 'get', key });
    });
  }

  exchange(key: string, blob: Uint8Array): Promise<Uint8Array[]> {
    checkKey('key', key);
    if (this.exchangeWaiters.has(key)) return Promise.reject(new Error(`exchange '${key}' is already being waited on`));
    const data = encodeBlob(blob);
    return new Promise((res) => {
      this.exchangeWaiters.set(key, res);
      this.send({ t: 'exchange', key, data });
    });
  }

  async allGather(key: string, blob: Uint8Array): Promise<Uint8Array[]> {
    checkKey('key', key);
    this.publish(`${key}@${this.rank}`, blob);
    return Promise.all(Array.from({ length: this.worldSize }, (_, r) => this.fetch(`${key}@${r}`)));
  }
}
