// The one error class of the GPU model launchers: a bad argument (shape, dtype, alignment, capacity) refused before
// anything is queued, with the fix in the message. A leaf module so every launcher can import it.
import type { DeviceTensor } from '../cuda/index.js';
import type { DType } from '../tensor/host.js';
export class GpuModelArgumentError extends Error {
  /** What the caller should change. */
  readonly fix: string;
  constructor(what: string, problem: string, fix: string) {
    super(`${what}: ${problem}; ${fix}`);
    this.name = 'GpuModelArgumentError';
    this.fix = fix;
  }
}


/** A tensor argument's view: dtype and shape checked, plus 16-byte alignment of the base (vector loads). */
export function checkTensor(what: string, name: string, t: DeviceTensor | undefined, dtype: DType, shape: ReadonlyArray<number | undefined>, fix?: string): void {
  const want = `${dtype}[${shape.map((d) => (d === undefined ? '*' : String(d))).join(', ')}]`;
  if (!t) throw new GpuModelArgumentError(what, `${name} is missing`, `pass ${name} as a device ${want}`);
  if (t.disposed) throw new GpuModelArgumentError(what, `${name} was disposed`, 'pass a live device tensor');
  const ok = t.dtype === dtype && t.shape.length === shape.length && shape.every((d, i) => d === undefined || t.shape[i] === d);
  if (!ok) throw new GpuModelArgumentError(what, `${name} is ${t.describe()}, expected ${want}`, fix ?? `pass ${name} as a device ${want}`);
  if (t.ptr % 16n !== 0n) throw new GpuModelArgumentError(what, `${name} is not 16-byte aligned`, 'pass a tensor at the start of a device allocation (the kernels use 16-byte loads)');
}

export function checkCount(what: string, name: string, v: number, min: number, max: number, fix: string): void {
  if (!(Number.isInteger(v) && v >= min && v <= max)) throw new GpuModelArgumentError(what, `${name} = ${v} is outside [${min}, ${max}]`, fix);
}
