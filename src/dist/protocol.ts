// The control channel's messages (supervisor <-> rank), over the node:child_process IPC channel. Setup traffic
// only, never the hot path: phases, named barriers, opaque blobs (an NCCL unique id, CUDA IPC handles) published
// under a key, exchanges (every rank gives one blob under a key, every rank gets all of them, in rank order: a barrier
// with a payload, used for CUDA IPC handles and the IPC transport's per-collective receive layouts; forgotten by the
// supervisor once delivered, so a long run does not accumulate them), errors. Blobs travel as base64 inside the JSON
// the IPC channel serialises.

/** The most bytes one blob may hold (a CUDA IPC handle is 64 bytes, an NCCL unique id 128). */
export const MAX_BLOB_BYTES = 16 << 20;
const KEY_RE = /^[A-Za-z0-9_.:/@-]{1,200}$/;

export type RankMessage =
  | { t: 'hello'; rank: number; pid: number }
  | { t: 'phase'; name: string }
  | { t: 'barrier'; name: string }
  | { t: 'put'; key: string; data: string }
  | { t: 'get'; key: string }
  | { t: 'exchange'; key: string; data: string }
  | { t: 'error'; phase: string; name: string; message: string; code?: string }
  | { t: 'done'; result?: unknown };

export type SupervisorMessage =
  | { t: 'barrier-ok'; name: string }
  | { t: 'value'; key: string; data: string }
  | { t: 'exchanged'; key: string; data: string[] }
  | { t: 'abort'; message: string };

/** Throws a RangeError unless `key` is a usable blob key / barrier / phase name. */
export function checkKey(what: string, key: unknown): string {
  if (typeof key !== 'string' || !KEY_RE.test(key)) {
    throw new RangeError(`${what} must be 1-200 characters of [A-Za-z0-9_.:/@-], got ${JSON.stringify(key)}`);
  }
  return key;
}

export function encodeBlob(blob: Uint8Array): string {
  if (!(blob instanceof Uint8Array)) throw new TypeError('a blob must be a Uint8Array');
  if (blob.byteLength > MAX_BLOB_BYTES) throw new RangeError(`a blob holds at most ${MAX_BLOB_BYTES} bytes, got ${blob.byteLength}`);
  return Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength).toString('base64');
}

export function decodeBlob(data: string): Uint8Array {
  return new Uint8Array(Buffer.from(data, 'base64'));
}

/** A message from a rank, checked field by field (null when malformed: the supervisor treats that as a failure). */
export function parseRankMessage(m: unknown): RankMessage | null {
  if (typeof m !== 'object' || m === null) return null;
  const o = m as Record<string, unknown>;
  const str = (k: string) => typeof o[k] === 'string';
  try {
    switch (o.t) {
      case 'hello': return Number.isInteger(o.rank) && Number.isInteger(o.pid) ? o as RankMessage : null;
      case 'phase': checkKey('phase', o.name); return o as RankMessage;
      case 'barrier': checkKey('barrier', o.name); return o as RankMessage;
      case 'put': checkKey('key', o.key); return str('data') && (o.data as string).length <= MAX_BLOB_BYTES * 2 ? o as RankMessage : null;
      case 'get': checkKey('key', o.key); return o as RankMessage;
      case 'exchange': checkKey('key', o.key); return str('data') && (o.data as string).length <= MAX_BLOB_BYTES * 2 ? o as RankMessage : null;
      case 'error': return str('phase') && str('name') && str('message') ? o as RankMessage : null;
      case 'done': return o as RankMessage;
      default: return null;
    }
  } catch {
    return null;
  }
}

export function parseSupervisorMessage(m: unknown): SupervisorMessage | null {
  if (typeof m !== 'object' || m === null) return null;
  const o = m as Record<string, unknown>;
  if (o.t === 'barrier-ok' && typeof o.name === 'string') return o as SupervisorMessage;
  if (o.t === 'value' && typeof o.key === 'string' && typeof o.data === 'string') return o as SupervisorMessage;
  if (o.t === 'exchanged' && typeof o.key === 'string' && Array.isArray(o.data) && o.data.every((d) => typeof d === 'string')) {
    return o as SupervisorMessage;
  }
  if (o.t === 'abort' && typeof o.message === 'string') return o as SupervisorMessage;
  return null;
}
