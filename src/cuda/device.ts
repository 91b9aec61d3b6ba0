// Devices and contexts. megamoe uses each device's PRIMARY context (the one the CUDA runtime and libraries such as
// NCCL also use), retained once per process and made current on the calling thread. Every object of the cuda layer
// is created in the context current at the time; `ensureContext()` makes device 0's current when none is.
import { check, getDriver } from './driver.js';

// CUdevice_attribute values (cuda.h, CUDA 13.0).
const ATTR = {
  CLOCK_RATE: 13,
  MULTIPROCESSOR_COUNT: 16,
  PCI_BUS_ID: 33,
  PCI_DEVICE_ID: 34,
  MEMORY_CLOCK_RATE: 36,
  GLOBAL_MEMORY_BUS_WIDTH: 37,
  L2_CACHE_SIZE: 38,
  MAX_THREADS_PER_MULTIPROCESSOR: 39,
  COMPUTE_CAPABILITY_MAJOR: 75,
  COMPUTE_CAPABILITY_MINOR: 76,
  MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: 81,
  MAX_REGISTERS_PER_MULTIPROCESSOR: 82,
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97,
  MEMORY_POOLS_SUPPORTED: 115,
} as const;

export interface DeviceProperties {
  ordinal: number;
  name: string;
  /** e.g. { major: 9, minor: 0 } for H100 / H200. */
  computeCapability: { major: number; minor: number };
  /** 'sm_90' style label of the compute capability. */
  arch: string;
  smCount: number;
  totalMemoryBytes: number;
  l2CacheBytes: number;
  /** The most dynamic + static shared memory one block may opt in to (cuFuncSetAttribute), in bytes. */
  maxSharedMemoryPerBlockOptin: number;
  maxSharedMemoryPerSM: number;
  maxRegistersPerSM: number;
  maxThreadsPerSM: number;
  /** SM clock (the driver's "typical" figure) in kHz; 0 when the driver does not report it. */
  clockRateKHz: number;
  /** Peak memory clock in kHz; 0 when the driver does not report it. */
  memoryClockRateKHz: number;
  memoryBusWidthBits: number;
  /** Theoretical DRAM bandwidth from memory clock and bus width (GB/s, 1e9 bytes), 0 when unknown. */
  peakMemoryBandwidthGBs: number;
  pciBusId: string;
  memoryPoolsSupported: boolean;
}

/** The installed driver's CUDA version as an integer, e.g. 13000 for 13.0. */
export function driverVersion(): number {
  const d = getDriver();
  check('cuDriverGetVersion', d.fn.cuDriverGetVersion(d.scratch.address));
  return d.scratch.view.getInt32(0, true);
}

/** "13.0" from 13000. */
export function formatCudaVersion(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

export function deviceCount(): number {
  const d = getDriver();
  check('cuDeviceGetCount', d.fn.cuDeviceGetCount(d.scratch.address));
  return d.scratch.view.getInt32(0, true);
}

/** The driver's CUdevice handle of a device ordinal (range-checked). */
export function deviceHandle(ordinal: number): number {
  const d = getDriver();
  const count = deviceCount();
  if (!Number.isInteger(ordinal) || ordinal < 0 || ordinal >= count) {
    throw new RangeError(`CUDA device ordinal ${ordinal} is out of range: this machine has ${count} device(s) (0..${count - 1})`);
  }
  check('cuDeviceGet', d.fn.cuDeviceGet(d.scratch.address, ordinal), `ordinal ${ordinal}`);
  return d.scratch.view.getInt32(0, true);
}

function attribute(dev: number, attr: number): number {
  const d = getDriver();
  check('cuDeviceGetAttribute', d.fn.cuDeviceGetAttribute(d.scratch.address, attr, dev), `attribute ${attr}`);
  return d.scratch.view.getInt32(0, true);
}

function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}

const propertiesCache = new Map<number, DeviceProperties>();

/** What the driver reports about a device (cached: it does not change while the process runs). */
export function deviceProperties(ordinal = 0): DeviceProperties {
  const cached = propertiesCache.get(ordinal);
  if (cached) return cached;
  const d = getDriver();
  const dev = deviceHandle(ordinal);
  const nameBuf = new Uint8Array(256);
  check('cuDeviceGetName', d.fn.cuDeviceGetName(nameBuf, nameBuf.length, dev));
  const busBuf = new Uint8Array(64);
  const busRc = d.fn.cuDeviceGetPCIBusId(busBuf, busBuf.length, dev);
  check('cuDeviceTotalMem_v2', d.fn.cuDeviceTotalMem_v2(d.scratch.address, dev));
  const totalMemoryBytes = Number(d.scratch.view.getBigUint64(0, true));
  const major = attribute(dev, ATTR.COMPUTE_CAPABILITY_MAJOR);
  const minor = attribute(dev, ATTR.COMPUTE_CAPABILITY_MINOR);
  const memoryClockRateKHz = attribute(dev, ATTR.MEMORY_CLOCK_RATE);
  const memoryBusWidthBits = attribute(dev, ATTR.GLOBAL_MEMORY_BUS_WIDTH);
  const props: DeviceProperties = {
    ordinal,
    name: cString(nameBuf),
    computeCapability: { major, minor },
    arch: `sm_${major}${minor}`,
    smCount: attribute(dev, ATTR.MULTIPROCESSOR_COUNT),
    totalMemoryBytes,
    l2CacheBytes: attribute(dev, ATTR.L2_CACHE_SIZE),
    maxSharedMemoryPerBlockOptin: attribute(dev, ATTR.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
    maxSharedMemoryPerSM: attribute(dev, ATTR.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
    maxRegistersPerSM: attribute(dev, ATTR.MAX_REGISTERS_PER_MULTIPROCESSOR),
    maxThreadsPerSM: attribute(dev, ATTR.MAX_THREADS_PER_MULTIPROCESSOR),
    clockRateKHz: attribute(dev, ATTR.CLOCK_RATE),
    memoryClockRateKHz,
    memoryBusWidthBits,
    // DDR: two transfers per clock.
    peakMemoryBandwidthGBs: (2 * memoryClockRateKHz * 1e3 * (memoryBusWidthBits / 8)) / 1e9,
    pciBusId: busRc === 0 ? cString(busBuf) : '',
    memoryPoolsSupported: attribute(dev, ATTR.MEMORY_POOLS_SUPPORTED) !== 0,
  };
  propertiesCache.set(ordinal, props);
  return props;
}

/**
 * A device's primary context, retained once per process (cuDevicePrimaryCtxRetain) and released by dispose().
 * Get it with useDevice(ordinal); there is one CudaContext object per device.
 */
export class CudaContext {
  readonly device: number;
  /** The CUcontext handle. */
  readonly handle: bigint;
  private released = false;

  private constructor(device: number, handle: bigint) {
    this.device = device;
    this.handle = handle;
  }

  /** @internal Retains device `ordinal`'s primary context. Use useDevice() instead. */
  static retainPrimary(ordinal: number): CudaContext {
    const d = getDriver();
    const dev = deviceHandle(ordinal);
    check('cuDevicePrimaryCtxRetain', d.fn.cuDevicePrimaryCtxRetain(d.scratch.address, dev), `device ${ordinal}`);
    return new CudaContext(ordinal, d.scratch.view.getBigUint64(0, true));
  }

  get disposed(): boolean { return this.released; }

  /** Makes this context current on the calling thread (cheap when it already is). */
  makeCurrent(): this {
    if (this.released) throw new Error(`the CUDA context of device ${this.device} was disposed; call useDevice(${this.device}) again`);
    if (currentContext !== this) {
      check('cuCtxSetCurrent', getDriver().fn.cuCtxSetCurrent(this.handle), `device ${this.device}`);
      currentContext = this;
    }
    return this;
  }

  /** Waits for all work of this context (cuCtxSynchronize). */
  synchronize(): void {
    this.makeCurrent();
    check('cuCtxSynchronize', getDriver().fn.cuCtxSynchronize());
  }

  /** Free and total device memory in bytes (cuMemGetInfo_v2). */
  memoryInfo(): { freeBytes: number; totalBytes: number } {
    this.makeCurrent();
    const d = getDriver();
    check('cuMemGetInfo_v2', d.fn.cuMemGetInfo_v2(d.scratch.address, d.scratch.address + 8));
    return {
      freeBytes: Number(d.scratch.view.getBigUint64(0, true)),
      totalBytes: Number(d.scratch.view.getBigUint64(8, true)),
    };
  }

  properties(): DeviceProperties { return deviceProperties(this.device); }

  /**
   * Releases the primary context. Free every buffer, stream, event, module and graph of this context first:
   * once the last retain is gone the driver destroys them all.
   */
  dispose(): void {
    if (this.released) return;
    this.released = true;
    contexts.delete(this.device);
    if (currentContext === this) {
      getDriver().fn.cuCtxSetCurrent(0);
      currentContext = null;
    }
    check('cuDevicePrimaryCtxRelease_v2', getDriver().fn.cuDevicePrimaryCtxRelease_v2(this.device));
  }

  [Symbol.dispose](): void { this.dispose(); }
}

const contexts = new Map<number, CudaContext>();
let currentContext: CudaContext | null = null;

/**
 * Retains device `ordinal`'s primary context (once per process) and makes it current. The usual entry point:
 * `useDevice(0)`; objects created afterwards (buffers, streams, modules) belong to this device.
 */
export function useDevice(ordinal = 0): CudaContext {
  let ctx = contexts.get(ordinal);
  if (!ctx) {
    ctx = CudaContext.retainPrimary(ordinal);
    contexts.set(ordinal, ctx);
  }
  return ctx.makeCurrent();
}

/** The context current for the cuda layer, making device 0's current when none is yet. */
export function ensureContext(): CudaContext {
  return currentContext ?? useDevice(0);
}

/** The cuda layer's current context, or null when none was made current yet. */
export function currentCudaContext(): CudaContext | null {
  return currentContext;
}
