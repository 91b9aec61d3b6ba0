// `megamoe info`: what this machine can run. GPU(s), driver, nvcc, and for each MoE backend whether it can run here
// and, when not, why. Works (and explains itself) on machines without a GPU or driver.
import type { Command } from 'commander';
import { cudaStatus, type CudaStatus } from '../../cuda/status.js';
import { findNvcc, kernelCacheDir, nvccRelease } from '../../cuda/compile.js';
import { formatCudaVersion, type DeviceProperties } from '../../cuda/device.js';

/** One line of the report's backend list (not the registry's BackendAvailability of src/backends/index.ts). */
export interface InfoBackend {
  name: 'reference' | 'unfused' | 'mega_moe';
  available: boolean;
  /** Why it can or cannot run here. */
  reason: string;
}

export interface InfoReport {
  cuda: CudaStatus;
  nvcc: { path: string; release: string | null } | null;
  kernelCacheDir: string;
  node: string;
  platform: string;
  backends: InfoBackend[];
}

/** Which backends can run, given the CUDA status and whether nvcc exists (pure, for tests). */
export function backendAvailability(cuda: CudaStatus, hasNvcc: boolean): InfoBackend[] {
  const gpuOk = cuda.available;
  let unfusedReason: string;
  if (gpuOk && hasNvcc) unfusedReason = 'sm_90 GPU and nvcc present';
  else if (!gpuOk && !hasNvcc) unfusedReason = `needs an sm_90 GPU with its driver and nvcc; here: ${cuda.reason}, and nvcc not found`;
  else if (!gpuOk) unfusedReason = `needs an sm_90 GPU with its driver; here: ${cuda.reason}`;
  else unfusedReason = 'needs nvcc to build its kernels: install the CUDA toolkit or set CUDA_HOME';
  return [
    { name: 'reference', available: true, reason: 'CPU, exact; runs anywhere' },
    { name: 'unfused', available: gpuOk && hasNvcc, reason: unfusedReason },
    { name: 'mega_moe', available: false, reason: 'not built yet' },
  ];
}

export function collectInfo(): InfoReport {
  const cuda = cudaStatus();
  const nvcc = findNvcc();
  return {
    cuda,
    nvcc: nvcc ? { path: nvcc, release: nvccRelease() } : null,
    kernelCacheDir: kernelCacheDir(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    backends: backendAvailability(cuda, nvcc !== null),
  };
}

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function describeDevice(p: DeviceProperties): string[] {
  const lines = [
    `GPU ${p.ordinal}:          ${p.name} (${p.arch}, compute capability ${p.computeCapability.major}.${p.computeCapability.minor})`,
    `  SMs:           ${p.smCount}`,
    `  memory:        ${(p.totalMemoryBytes / GiB).toFixed(1)} GiB` +
      (p.peakMemoryBandwidthGBs > 0 ? ` (${p.memoryBusWidthBits}-bit bus, ${(p.memoryClockRateKHz / 1e3).toFixed(0)} MHz: ${(p.peakMemoryBandwidthGBs / 1e3).toFixed(2)} TB/s peak)` : ''),
    `  L2 cache:      ${(p.l2CacheBytes / MiB).toFixed(0)} MiB`,
    `  shared memory: ${(p.maxSharedMemoryPerBlockOptin / 1024).toFixed(0)} KiB per block (opt-in), ${(p.maxSharedMemoryPerSM / 1024).toFixed(0)} KiB per SM`,
  ];
  if (p.clockRateKHz > 0) lines.push(`  SM clock:      ${(p.clockRateKHz / 1e3).toFixed(0)} MHz`);
  if (p.pciBusId) lines.push(`  PCI bus:       ${p.pciBusId}`);
  return lines;
}

/** The human-readable report. */
export function formatInfo(r: InfoReport): string {
  const lines: string[] = [];
  if (r.cuda.available) {
    lines.push(`driver:         CUDA ${r.cuda.driverCudaVersion} (${r.cuda.driverVersion})`);
    for (const d of r.cuda.devices) lines.push(...describeDevice(d));
  } else {
    lines.push(`GPU:            none usable: ${r.cuda.reason}`);
    if (r.cuda.driverVersion !== undefined) lines.push(`driver:         CUDA ${formatCudaVersion(r.cuda.driverVersion)} (${r.cuda.driverVersion})`);
    for (const d of r.cuda.devices ?? []) lines.push(...describeDevice(d));
  }
  lines.push(`nvcc:           ${r.nvcc ? `${r.nvcc.release ?? 'unknown version'} (${r.nvcc.path})` : 'nvcc not found'}`);
  lines.push(`kernel cache:   ${r.kernelCacheDir}`);
  lines.push(`node:           ${r.node} (${r.platform})`);
  lines.push('MoE backends:');
  const width = Math.max(...r.backends.map((b) => b.name.length));
  for (const b of r.backends) lines.push(`  ${b.name.padEnd(width)}  ${b.available ? 'yes' : 'no '}  ${b.reason}`);
  return lines.join('\n');
}

export function register(program: Command): void {
  program
    .command('info')
    .description('show the GPU, driver and nvcc found here, and which MoE backends can run')
    .option('--json', 'print the report as JSON')
    .action((opts: { json?: boolean }) => {
      const report = collectInfo();
      console.log(opts.json ? JSON.stringify(report, null, 2) : formatInfo(report));
    });
}
