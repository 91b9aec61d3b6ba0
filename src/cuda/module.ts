// Loaded cubins (CudaModule) and their kernels (Kernel): function attributes and cuLaunchKernel with typed arguments.
import { ArgPacker, type KernelArgLike } from './args.js';
import { CudaContext, ensureContext } from './device.js';
import { check, getDriver, throwCuda } from './driver.js';
import { streamHandle, type StreamLike } from './stream.js';
import { readFileSync } from 'node:fs';

// CUfunction_attribute values (cuda.h).
export const FUNC_ATTRIBUTE = {
  MAX_THREADS_PER_BLOCK: 0,
  SHARED_SIZE_BYTES: 1,
  CONST_SIZE_BYTES: 2,
  LOCAL_SIZE_BYTES: 3,
  NUM_REGS: 4,
  PTX_VERSION: 5,
  BINARY_VERSION: 6,
  MAX_DYNAMIC_SHARED_SIZE_BYTES: 8,
  PREFERRED_SHARED_MEMORY_CARVEOUT: 9,
} as const;

/** A grid or block size: a number (x) or [x, y?, z?]. */
export type Dim3 = number | readonly [number, number?, number?];

export interface LaunchConfig {
  grid: Dim3;
  block: Dim3;
  /** Dynamic shared memory per block in bytes (default 0). Above 48 KiB call setMaxDynamicSharedMemory first. */
  sharedMemBytes?: number;
  /** Default: the legacy default stream. */
  stream?: StreamLike;
}

export interface KernelAttributes {
  numRegs: number;
  /** Static shared memory in bytes. */
  sharedSizeBytes: number;
  /** Local memory (spills, stack) per thread in bytes. */
  localSizeBytes: number;
  constSizeBytes: number;
  maxThreadsPerBlock: number;
  maxDynamicSharedSizeBytes: number;
  /** e.g. 90 for a cubin built for sm_90a. */
  binaryVersion: number;
}

// One packer for every launch: JavaScript is single-threaded and the driver copies arguments during the call.
let sharedPacker: ArgPacker | null = null;
function packer(): ArgPacker {
  return (sharedPacker ??= new ArgPacker());
}

function dim(d: Dim3, which: 'grid' | 'block', kernel: string): [number, number, number] {
  const t: [number, number, number] = typeof d === 'number' ? [d, 1, 1] : [d[0], d[1] ?? 1, d[2] ?? 1];
  for (const v of t) {
    if (!Number.isInteger(v) || v < 1 || v > 0xffffffff) {
      throw new RangeError(`kernel "${kernel}": ${which} size [${t.join(', ')}] must be positive integers`);
    }
  }
  return t;
}

export class Kernel {
  readonly name: string;
  /** The CUfunction handle. */
  readonly handle: bigint;
  readonly module: CudaModule;
  private dynamicSmemLimit = 48 * 1024;

  /** @internal Use CudaModule.getKernel. */
  constructor(module: CudaModule, name: string, handle: bigint) {
    this.module = module;
    this.name = name;
    this.handle = handle;
  }

  getAttribute(attribute: number): number {
    const d = getDriver();
    check('cuFuncGetAttribute', d.fn.cuFuncGetAttribute(d.scratch.address, attribute, this.handle), `kernel "${this.name}", attribute ${attribute}`);
    return d.scratch.view.getInt32(0, true);
  }

  setAttribute(attribute: number, value: number): void {
    check('cuFuncSetAttribute', getDriver().fn.cuFuncSetAttribute(this.handle, attribute, value), `kernel "${this.name}", attribute ${attribute} = ${value}`);
  }

  /** Registers, shared/local memory and limits of the compiled kernel. */
  attributes(): KernelAttributes {
    return {
      numRegs: this.getAttribute(FUNC_ATTRIBUTE.NUM_REGS),
      sharedSizeBytes: this.getAttribute(FUNC_ATTRIBUTE.SHARED_SIZE_BYTES),
      localSizeBytes: this.getAttribute(FUNC_ATTRIBUTE.LOCAL_SIZE_BYTES),
      constSizeBytes: this.getAttribute(FUNC_ATTRIBUTE.CONST_SIZE_BYTES),
      maxThreadsPerBlock: this.getAttribute(FUNC_ATTRIBUTE.MAX_THREADS_PER_BLOCK),
      maxDynamicSharedSizeBytes: this.getAttribute(FUNC_ATTRIBUTE.MAX_DYNAMIC_SHARED_SIZE_BYTES),
      binaryVersion: this.getAttribute(FUNC_ATTRIBUTE.BINARY_VERSION),
    };
  }

  /**
   * Lets launches use up to `bytes` of dynamic shared memory (needed above 48 KiB; the device's opt-in limit,
   * 227 KiB on H100, minus the kernel's static shared memory is the ceiling).
   */
  setMaxDynamicSharedMemory(bytes: number): this {
    this.setAttribute(FUNC_ATTRIBUTE.MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
    this.dynamicSmemLimit = bytes;
    return this;
  }

  /**
   * How many clusters of this kernel (its compile-time __cluster_dims__) can be resident at once with `block`
   * threads and `sharedMemBytes` of dynamic shared memory per CTA (cuOccupancyMaxActiveClusters). A persistent
   * kernel with grid barriers needs every cluster of its grid resident.
   */
  maxActiveClusters(config: { grid: number; block: number; sharedMemBytes: number }): number {
    const d = getDriver();
    // CUlaunchConfig at scratch + 64: grid x/y/z, block x/y/z, sharedMemBytes (u32 each), hStream (offset 32),
    // attrs (40), numAttrs (48): no attributes, the cluster shape is the kernel's own.
    const v = d.scratch.view;
    const o = 64;
    for (const [i, x] of [config.grid, 1, 1, config.block, 1, 1, config.sharedMemBytes].entries()) v.setUint32(o + 4 * i, x, true);
    v.setBigUint64(o + 32, 0n, true);
    v.setBigUint64(o + 40, 0n, true);
    v.setUint32(o + 48, 0, true);
    check('cuOccupancyMaxActiveClusters', d.fn.cuOccupancyMaxActiveClusters(d.scratch.address, this.handle, d.scratch.address + o),
      `kernel "${this.name}", ${config.block} threads, ${config.sharedMemBytes} B dynamic smem`);
    return v.getInt32(0, true);
  }

  /**
   * Launches the kernel (asynchronous; errors found at launch throw CudaError, errors during execution surface at
   * the next synchronising call). `args` must match the kernel's parameters in order and width.
   */
  launch(config: LaunchConfig, args: readonly KernelArgLike[]): void {
    const [gx, gy, gz] = dim(config.grid, 'grid', this.name);
    const [bx, by, bz] = dim(config.block, 'block', this.name);
    const smem = config.sharedMemBytes ?? 0;
    const params = packer().pack(args, this.name);
    const rc = getDriver().fn.cuLaunchKernel(this.handle, gx, gy, gz, bx, by, bz, smem,
      streamHandle(config.stream), params, 0);
    if (rc !== 0) {
      let detail = `kernel "${this.name}", grid [${gx}, ${gy}, ${gz}], block [${bx}, ${by}, ${bz}], ${smem} B dynamic smem, ${args.length} args`;
      if (smem > this.dynamicSmemLimit) detail += `; dynamic shared memory above the kernel's limit ${this.dynamicSmemLimit} B: call setMaxDynamicSharedMemory(${smem}) (the device allows at most its opt-in limit)`;
      throwCuda('cuLaunchKernel', rc, detail);
    }
  }
}

/** A cubin loaded into the current context (cuModuleLoadData). */
export class CudaModule {
  readonly handle: bigint;
  readonly context: CudaContext;
  /** Where the cubin came from, for messages. */
  readonly label: string;
  private unloaded = false;
  private readonly kernels = new Map<string, Kernel>();

  private constructor(handle: bigint, context: CudaContext, label: string) {
    this.handle = handle;
    this.context = context;
    this.label = label;
  }

  /** Loads a cubin image (bytes) or a cubin file (path). */
  static load(image: Uint8Array | string, label?: string): CudaModule {
    const ctx = ensureContext();
    const bytes = typeof image === 'string' ? readFileSync(image) : image;
    const name = label ?? (typeof image === 'string' ? image : `${bytes.byteLength}-byte cubin`);
    const d = getDriver();
    const rc = d.fn.cuModuleLoadData(d.scratch.address, bytes);
    if (rc !== 0) throwCuda('cuModuleLoadData', rc, name);
    return new CudaModule(d.scratch.view.getBigUint64(0, true), ctx, name);
  }

  get disposed(): boolean { return this.unloaded; }

  /** The kernel named `name` (its extern "C" name, or the mangled C++ name). Cached per module. */
  getKernel(name: string): Kernel {
    if (this.unloaded) throw new Error(`module ${this.label} was disposed`);
    const cached = this.kernels.get(name);
    if (cached) return cached;
    const d = getDriver();
    const rc = d.fn.cuModuleGetFunction(d.scratch.address, this.handle, name);
    if (rc !== 0) {
      throwCuda('cuModuleGetFunction', rc, `no kernel "${name}" in ${this.label} (declare it extern "C" __global__ so its name is not mangled)`);
    }
    const k = new Kernel(this, name, d.scratch.view.getBigUint64(0, true));
    this.kernels.set(name, k);
    return k;
  }

  dispose(): void {
    if (this.unloaded) return;
    this.unloaded = true;
    this.kernels.clear();
    check('cuModuleUnload', getDriver().fn.cuModuleUnload(this.handle), this.label);
  }

  [Symbol.dispose](): void { this.dispose(); }
}
