// The last line of defence (issue 9): a forward whose output holds NaN or Inf reports it instead of returning it.
// The loader already refuses non-finite weights (checkpoint/finite-check.ts) and the CPU paths non-finite hidden
// states (checkHiddenStatesFinite), so a non-finite output means non-finite input to a GPU backend, an overflow
// inside the computation (e.g. finite but enormous scales) or a backend bug. Backend-independent: the CLI applies it
// to every backend's result, the reference backend to its own. One host pass over 2 x T x H bf16 values (~80 ms at
// T 8192, H 4096): negligible next to a CPU forward, not next to a GPU one, so a server should run it where it can
// afford it (or on the GPU).
import type { HostTensor } from '../tensor/host.js';
import { decodeBF16 } from '../numerics/bf16.js';
import type { MoeForwardResult } from './backend.js';

export class NonFiniteOutputError extends Error {
  readonly backend: string;
  /** Which output ('y' or 'y_routed'), and the first bad element. */
  readonly output: string;
  readonly token: number;
  readonly column: number;
  readonly value: number;
  /** How many elements of that output are non-finite. */
  readonly count: number;

  constructor(backend: string, output: string, token: number, column: number, value: number, count: number) {
    super(`backend ${backend}: the forward produced a non-finite output: ${output}[token ${token}, column ${column}] = ${value}`
      + `${count > 1 ? ` (${count} non-finite values in ${output})` : ''}; the output was not returned. The weights passed the load-time `
      + 'checks, so this is non-finite hidden states given to a GPU backend, an overflow inside the computation (e.g. enormous '
      + 'but finite weight scales) or a backend bug: '
      + 'run the same input with --backend reference to tell which, and check the checkpoint\'s scales');
    this.name = 'NonFiniteOutputError';
    this.backend = backend; this.output = output; this.token = token; this.column = column; this.value = value; this.count = count;
  }
}

/** The first non-finite element of a bf16 [T, H] tensor and how many there are, or undefined. */
export function findNonFiniteBF16Rows(t: HostTensor<'BF16'>): { index: number; count: number } | undefined {
  const bits = t.data;
  let first = -1;
  let count = 0;
  for (let i = 0; i < bits.length; i++) {
    if ((bits[i] & 0x7f80) === 0x7f80) { if (first < 0) first = i; count++; }
  }
  return first < 0 ? undefined : { index: first, count };
}

/** Throws NonFiniteOutputError if y_routed or y holds NaN/Inf; returns the result unchanged otherwise. */
export function checkForwardOutput<R extends MoeForwardResult>(result: R, backend: string): R {
  for (const [name, t] of [['y_routed', result.yRouted], ['y', result.y]] as const) {
    const bad = findNonFiniteBF16Rows(t);
    if (bad) {
      const H = t.shape[1] || 1;
      throw new NonFiniteOutputError(backend, name, Math.floor(bad.index / H), bad.index % H, decodeBF16(t.data[bad.index]), bad.count);
    }
  }
  return result;
}
