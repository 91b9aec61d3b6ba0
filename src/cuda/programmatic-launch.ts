// Programmatic dependent launch (PDL, sm_90; docs/PDL.md): cuLaunchKernelEx with
// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, so the kernel may be scheduled while the previous kernel on
// its stream is still running; the kernel's own `griddepcontrol.wait` (src/kernels/grid_dep.cuh) holds it until that
// kernel has completed. Stream capture keeps the relation as a programmatic graph edge, so decode graphs get it too.
//
// Only kernels whose every entry starts with that wait may be launched this way (the project's own: kernel-loader.ts
// marks them); a kernel without it would read its inputs before they are written.
import koffi from 'koffi';
import type { Driver } from './driver.js';

const CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;
// cuda.h: CUlaunchConfig is 7 u32 (grid, block, sharedMemBytes), hStream at 32, attrs at 40, numAttrs at 48 (56
// bytes); CUlaunchAttribute is { u32 id; pad to 8; 64-byte value union } (72 bytes), the value's first int here.
const ATTR_OFFSET = 64; // the attribute right after the config, 8-aligned
const ATTR_BYTES = 72;

let enabled: boolean | null = null;

/** Whether the project's kernels launch programmatically: on unless MEGAMOE_PDL=0 (read once per process). */
export function programmaticLaunchEnabled(): boolean {
  if (enabled === null) {
    const v = process.env.MEGAMOE_PDL;
    if (v !== undefined && v !== '0' && v !== '1') {
      throw new RangeError(`MEGAMOE_PDL=${v}: use 1 (kernels launch programmatically, the default) or 0 (plain launches)`);
    }
    enabled = v !== '0';
  }
  return enabled;
}

/** One native CUlaunchConfig + its attribute, written in place per launch (the driver reads it during the call). */
class LaunchConfigBlock {
  private readonly raw: unknown;
  readonly address: number;
  private readonly view: DataView;

  constructor() {
    this.raw = koffi.alloc('uint64_t', (ATTR_OFFSET + ATTR_BYTES) / 8);
    this.address = Number(koffi.address(this.raw));
    this.view = new DataView(koffi.view(this.raw, ATTR_OFFSET + ATTR_BYTES));
    const v = this.view;
    for (let i = 0; i < ATTR_OFFSET + ATTR_BYTES; i += 4) v.setUint32(i, 0, true);
    v.setBigUint64(40, BigInt(this.address + ATTR_OFFSET), true);
    v.setUint32(48, 1, true);
    v.setUint32(ATTR_OFFSET, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, true);
    v.setInt32(ATTR_OFFSET + 8, 1, true);
  }

  set(gx: number, gy: number, gz: number, bx: number, by: number, bz: number, smem: number, stream: bigint): void {
    const v = this.view;
    v.setUint32(0, gx, true); v.setUint32(4, gy, true); v.setUint32(8, gz, true);
    v.setUint32(12, bx, true); v.setUint32(16, by, true); v.setUint32(20, bz, true);
    v.setUint32(24, smem, true);
    v.setBigUint64(32, stream, true);
  }
}

let block: LaunchConfigBlock | null = null;

/** cuLaunchKernelEx with the programmatic-serialization attribute; returns the CUresult. */
export function launchProgrammatic(d: Driver, fn: bigint, grid: readonly [number, number, number],
  blockDim: readonly [number, number, number], smem: number, stream: bigint, params: number): number {
  const b = (block ??= new LaunchConfigBlock());
  b.set(grid[0], grid[1], grid[2], blockDim[0], blockDim[1], blockDim[2], smem, stream);
  return d.fn.cuLaunchKernelEx(b.address, fn, params, 0);
}
