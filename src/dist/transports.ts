// Picks a transport by name (`--transport nccl|ipc`) and builds it collectively on every rank.
//
// nccl: one GPU per rank (NCCL refuses two ranks on one GPU, "duplicate GPU": refused here up front when the world's
//       devices are known, and by NcclTransport.create's message otherwise, both naming --transport ipc).
// ipc:  CUDA IPC peer copies over symmetric memory, one host; works with several ranks on one GPU.
import type { NcclLoadOptions } from '../cuda/nccl.js';
import { IpcTransport } from './ipc-transport.js';
import { NcclTransport, type UniqueIdExchange } from './nccl-transport.js';
import type { SymmetricExchange } from './symmetric-memory.js';
import type { Transport, TransportName } from './transport.js';

export const TRANSPORT_NAMES: readonly TransportName[] = ['ipc', 'nccl'];

export function parseTransportName(v: unknown): TransportName {
  if (v === 'ipc' || v === 'nccl') return v;
  throw new RangeError(`--transport must be one of ${TRANSPORT_NAMES.join(', ')}, got ${JSON.stringify(v)}`);
}

/**
 * Why a transport cannot serve this rank -> device map, or null. NCCL needs one GPU per rank; with several ranks on
 * one device the message names --transport ipc.
 */
export function transportRefusal(name: TransportName, devices: readonly number[]): string | null {
  if (name !== 'nccl') return null;
  const seen = new Map<number, number>();
  for (let r = 0; r < devices.length; r++) {
    const first = seen.get(devices[r]);
    if (first !== undefined) {
      return `--transport nccl needs one GPU per rank, but ranks ${first} and ${r} are both on device ${devices[r]} ` +
        '(NCCL refuses this as "duplicate GPU"); with several ranks on one GPU use --transport ipc';
    }
    seen.set(devices[r], r);
  }
  return null;
}

export interface CreateTransportOptions {
  /** IPC: bytes of the symmetric receive heap per rank (every allocateReceive of the run, aligned). */
  receiveBytes: number;
  nccl?: NcclLoadOptions;
}

/** Collective: every rank calls it with the same name and options (the CUDA context of ctx.device current). */
export async function createTransport(name: TransportName, ctx: SymmetricExchange & UniqueIdExchange,
  options: CreateTransportOptions): Promise<Transport> {
  if (name === 'ipc') return IpcTransport.create(ctx, { receiveBytes: options.receiveBytes });
  return NcclTransport.create(ctx, options.nccl ?? {});
}
