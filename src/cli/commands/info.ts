// `megamoe info`: what this machine can run. GPU(s), driver, nvcc, and for each MoE backend whether it can run here
// and, when not, why. Works (and explains itself) on machines without a GPU or driver.
import type { Command } from 'commander';
import { cudaStatus, type CudaStatus } from '../../cuda/status.js';
import { findNvcc, kernelCacheDir, nvccRelease } from '../../cuda/compile.js';
import { formatCudaVersion, type DeviceProperties } from '../../cuda/device.js';
import { listBackends, type BackendName } from '../../backends/index.js';
import { formatBytes, megaBufferLayout } from '../../kernels/mega-moe-layout.js';
import { MOE_PRESET_SHAPES } from '../../kernels/presets.js';

/** One line of the report's backend list: what the backend registry's probe says (one source of truth). */
export interface InfoBackend {
  name: BackendName;
  available: boolean;
  /** Why it can or cannot run here. */
  reason: string;
  description: string;
}

export interface InfoReport {
  cuda: CudaStatus;
  nvcc: { path: string; release: string | null } | null;
  kernelCacheDir: string;
  node: string;
  platform: string;
  backends: InfoBackend[];
  /** The fused kernel's symmetric buffer per rank (worst-case routing), per preset and expert-parallel size. */
  megaBuffers: MegaBufferRow[];
}

export interface MegaBufferRow {
  preset: string;
  ranks: number;
  tokensPerRank: number;
  bytes: number;
}

/** The sizes `megamoe info` lists: flash and pro, EP 1 / 2 / 4 / 8, at 64 and 8192 tokens per rank. */
export function megaBufferRows(): MegaBufferRow[] {
  return MOE_PRESET_SHAPES.filter((p) => p.label !== 'tiny').flatMap((p) => [1, 2, 4, 8].flatMap((ranks) => [64, 8192].map((T) => ({
    preset: p.label, ranks, tokensPerRank: T,
    bytes: megaBufferLayout({ hidden: p.hidden, inter: p.inter, experts: p.experts / ranks, topK: p.topK }, T, ranks).totalBytes,
  }))));
}

export async function collectInfo(): Promise<InfoReport> {
  const cuda = cudaStatus();
  const nvcc = findNvcc();
  const backends = (await listBackends()).map(({ name, ok, reason, description }) => ({ name, available: ok, reason, description }));
  return {
    cuda,
    nvcc: nvcc ? { path: nvcc, release: nvccRelease() } : null,
    kernelCacheDir: kernelCacheDir(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    backends,
    megaBuffers: megaBufferRows(),
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
  for (const b of r.backends) {
    lines.push(`  ${b.name.padEnd(width)}  ${b.available ? 'yes' : 'no '}  ${b.available ? `${b.description}; ${b.reason}` : b.reason}`);
  }
  lines.push('mega_moe symmetric buffer per rank (worst-case routing; 64 / 8192 tokens per rank):');
  for (const preset of [...new Set(r.megaBuffers.map((m) => m.preset))]) {
    const cells = [...new Set(r.megaBuffers.filter((m) => m.preset === preset).map((m) => m.ranks))].map((n) => {
      const at = (T: number) => formatBytes(r.megaBuffers.find((m) => m.preset === preset && m.ranks === n && m.tokensPerRank === T)!.bytes);
      return `EP${n} ${at(64)} / ${at(8192)}`;
    });
    lines.push(`  ${preset.padEnd(6)} ${cells.join(', ')}`);
  }
  return lines.join('\n');
}

export function register(program: Command): void {
  program
    .command('info')
    .description('show the GPU, driver and nvcc found here, and which MoE backends can run')
    .option('--json', 'print the report as JSON')
    .action(async (opts: { json?: boolean }) => {
      const report = await collectInfo();
      console.log(opts.json ? JSON.stringify(report, null, 2) : formatInfo(report));
    });
}
