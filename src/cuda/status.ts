// Can the GPU paths run here? cudaStatus() answers without ever throwing, so the CLI, the CPU backends and the test
// suite work on machines with no GPU, no driver, or the wrong GPU.
import { deviceCount, deviceProperties, driverVersion, formatCudaVersion, type DeviceProperties } from './device.js';
import { describeResult, driverLoadFailure, initCode, tryLoadDriver } from './driver.js';
import { cuResultName } from './errors.js';

export type CudaStatus =
  | {
    available: true;
    /** e.g. 13000 */
    driverVersion: number;
    /** e.g. '13.0' */
    driverCudaVersion: string;
    devices: DeviceProperties[];
  }
  | {
    available: false;
    reason: string;
    /** What was learnt before the failure (e.g. the devices when none is sm_90). */
    driverVersion?: number;
    devices?: DeviceProperties[];
  };

/** The compute capability megamoe's kernels are built for (sm_90a). */
export const REQUIRED_COMPUTE_CAPABILITY = { major: 9, minor: 0 } as const;

let cached: CudaStatus | null = null;

function probe(): CudaStatus {
  if (process.env.MEGAMOE_DISABLE_CUDA === '1') return { available: false, reason: 'CUDA disabled by MEGAMOE_DISABLE_CUDA=1' };
  const d = tryLoadDriver();
  if (!d) return { available: false, reason: `no NVIDIA GPU driver on this machine (${driverLoadFailure() ?? 'libcuda.so.1 not found'})` };
  const rc = initCode();
  if (rc !== 0 && rc !== null) {
    const desc = describeResult(d, rc);
    return { available: false, reason: `cuInit failed with ${cuResultName(rc)} (${rc})${desc ? `: ${desc}` : ''}` };
  }
  const version = driverVersion();
  const count = deviceCount();
  if (count === 0) return { available: false, reason: 'the NVIDIA driver reports no CUDA device', driverVersion: version };
  const devices: DeviceProperties[] = [];
  for (let i = 0; i < count; i++) devices.push(deviceProperties(i));
  const first = devices[0];
  const { major, minor } = REQUIRED_COMPUTE_CAPABILITY;
  if (first.computeCapability.major !== major || first.computeCapability.minor !== minor) {
    return {
      available: false,
      reason: `device 0 (${first.name}) is ${first.arch}; megamoe's GPU kernels need sm_${major}${minor} (Hopper: H100, H200, H800, H20)`,
      driverVersion: version,
      devices,
    };
  }
  return { available: true, driverVersion: version, driverCudaVersion: formatCudaVersion(version), devices };
}

/**
 * Whether a Hopper GPU and driver are usable, with the devices when they are, or the reason when not. Never throws;
 * the answer is computed once per process. Set MEGAMOE_DISABLE_CUDA=1 to force "unavailable".
 */
export function cudaStatus(): CudaStatus {
  if (cached) return cached;
  try {
    cached = probe();
  } catch (err) {
    cached = { available: false, reason: `CUDA probe failed: ${err instanceof Error ? err.message : String(err)}` };
  }
  return cached;
}

/**
 * For GPU tests: undefined when the GPU paths can run, else the reason to skip, e.g.
 * `test('...', { skip: gpuSkipReason() }, () => { ... })`.
 */
export function gpuSkipReason(): string | undefined {
  const s = cudaStatus();
  return s.available ? undefined : `no usable Hopper GPU: ${s.reason}`;
}
