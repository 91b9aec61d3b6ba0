// `megamoe kernels`: list the registered kernel variants; `--check` compiles every one with nvcc (no GPU needed),
// one line per variant with its time, and exits non-zero on any failure. CI runs `megamoe kernels --check`.
import type { Command } from 'commander';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { compileKernel, findNvcc, kernelCacheDir, nvccRelease, type CompiledKernel } from '../../cuda/compile.js';
import { normalizeVariant, registeredKernels, type KernelRegistration, type KernelVariant } from '../../cuda/kernel-registry.js';
import { intArg } from '../args.js';
import { ensureWritableDir } from '../../util/writable-dir.js';

/**
 * Imports every compiled module of src/kernels/ so launchers that call registerKernel() at import time are listed.
 * Returns the modules that failed to import, with the error.
 */
export async function discoverKernelModules(dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'kernels')): Promise<Array<{ file: string; error: string }>> {
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.js')).sort();
  } catch {
    return []; // no kernels compiled yet
  }
  const failures: Array<{ file: string; error: string }> = [];
  for (const f of files) {
    try {
      await import(pathToFileURL(join(dir, f)).href);
    } catch (err) {
      failures.push({ file: f, error: err instanceof Error ? err.message : String(err) });
    }
  }
  return failures;
}

export interface VariantJob { kernel: KernelRegistration; variant: KernelVariant }

export function listVariants(filter?: string): VariantJob[] {
  const jobs: VariantJob[] = [];
  for (const kernel of registeredKernels()) {
    for (const v of kernel.variants) {
      const variant = normalizeVariant(v);
      const id = `${kernel.name}[${variant.label}]`;
      if (!filter || id.includes(filter)) jobs.push({ kernel, variant });
    }
  }
  return jobs;
}

/**
 * Entry names (comma or space separated in the registration) absent from the cubin's symbol string table. A cubin is
 * an ELF file whose .strtab holds each kernel name NUL-terminated, so a byte search is an exact test for
 * extern "C" names.
 */
export function missingEntries(cubinPath: string, entry: string | undefined): string[] {
  if (!entry) return [];
  const bytes = readFileSync(cubinPath);
  return entry.split(/[\s,]+/).filter(Boolean).filter((name) => bytes.indexOf(Buffer.from(`\0${name}\0`)) < 0);
}

export interface CheckResult { id: string; ok: boolean; cached: boolean; millis: number; error?: string; log?: string }

/** Compiles the variants with at most `jobs` nvcc processes at once; calls onResult as each finishes. */
export async function checkVariants(variants: VariantJob[], jobs: number, onResult: (r: CheckResult) => void): Promise<CheckResult[]> {
  const results: CheckResult[] = new Array(variants.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < variants.length) {
      const i = next++;
      const { kernel, variant } = variants[i];
      const id = `${kernel.name}[${variant.label}]`;
      const t0 = performance.now();
      let r: CheckResult;
      try {
        const c: CompiledKernel = await compileKernel({ source: kernel.source, defines: variant.defines, entry: kernel.entry, extraFlags: kernel.extraFlags });
        const missing = missingEntries(c.cubinPath, kernel.entry);
        r = missing.length === 0
          ? { id, ok: true, cached: c.cached, millis: performance.now() - t0, log: c.log || undefined }
          : { id, ok: false, cached: c.cached, millis: performance.now() - t0, error: `compiled, but the cubin has no kernel named ${missing.join(', ')} (is it extern "C" __global__ and compiled in for these defines?)` };
      } catch (err) {
        r = { id, ok: false, cached: false, millis: performance.now() - t0, error: err instanceof Error ? err.message : String(err) };
      }
      results[i] = r;
      onResult(r);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(jobs, variants.length)) }, worker));
  return results;
}

function seconds(ms: number): string { return `${(ms / 1000).toFixed(2)} s`; }

export function register(program: Command): void {
  program
    .command('kernels')
    .description('list the registered GPU kernel variants; --check compiles them all with nvcc (no GPU needed)')
    .option('--check', 'compile every variant (cached on disk) and fail on any error')
    .option('--filter <text>', 'only variants whose "name[label]" contains this text')
    .option('--jobs <n>', 'parallel nvcc processes', intArg('--jobs', 1), Math.min(8, availableParallelism()))
    .option('--verbose', 'print nvcc/ptxas output of each compile')
    .action(async (opts: { check?: boolean; filter?: string; jobs: number; verbose?: boolean }) => {
      const importFailures = await discoverKernelModules();
      for (const f of importFailures) console.error(`FAIL  import kernels/${f.file}: ${f.error}`);
      const variants = listVariants(opts.filter);
      if (!opts.check) {
        if (variants.length === 0) console.log('no kernel variants registered');
        for (const { kernel, variant } of variants) {
          console.log(`${kernel.name}[${variant.label}]  ${kernel.source}${kernel.entry ? `  ${kernel.entry}` : ''}`);
        }
        if (importFailures.length > 0) process.exitCode = 1;
        return;
      }
      const nvcc = findNvcc();
      if (!nvcc) throw new Error('nvcc not found: install the CUDA toolkit, set CUDA_HOME, or put nvcc on PATH');
      ensureWritableDir(kernelCacheDir(), 'MEGAMOE_CACHE_DIR', 'kernel cache folder'); // one clear line, not a failure per variant
      const { jobs } = opts;
      console.log(`compiling ${variants.length} kernel variant(s) with nvcc ${nvccRelease() ?? '?'} for sm_90a, ${jobs} at a time; cache ${kernelCacheDir()}`);
      const t0 = performance.now();
      const width = Math.max(10, ...variants.map((v) => `${v.kernel.name}[${v.variant.label}]`.length));
      const results = await checkVariants(variants, jobs, (r) => {
        const status = r.ok ? 'ok  ' : 'FAIL';
        console.log(`${status}  ${r.id.padEnd(width)}  ${seconds(r.millis).padStart(8)}${r.cached ? '  (cached)' : ''}`);
        if (!r.ok && r.error) console.log(r.error.replace(/^/gm, '      '));
        if (opts.verbose && r.log) console.log(r.log.replace(/^/gm, '      '));
      });
      const failed = results.filter((r) => !r.ok).length + importFailures.length;
      const cached = results.filter((r) => r.ok && r.cached).length;
      console.log(`${results.filter((r) => r.ok).length} ok (${cached} cached), ${failed} failed, in ${seconds(performance.now() - t0)}`);
      if (variants.length === 0) console.log('note: no kernel variants are registered (kernel launchers call registerKernel from src/cuda/kernel-registry.ts)');
      if (failed > 0) process.exitCode = 1;
    });
}
