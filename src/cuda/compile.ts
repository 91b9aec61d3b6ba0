// Kernel builds: nvcc -> cubin for sm_90a, specialised on shapes through -D defines, cached on disk.
// Needs no GPU (CI compiles every registered variant with `megamoe kernels --check`).
//
// Cache key = sha256 of: the source text and every local `#include "..."` it pulls in (recursively), the nvcc flags,
// the defines, and `nvcc --version`. So editing a header, changing a shape, or upgrading the toolkit all rebuild.
// Writes go to a temp file in the cache directory and are renamed into place (atomic on one filesystem): concurrent
// compiles of the same key, in one process or several, never leave a torn cubin.
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** The flags every megamoe kernel is built with. */
export const BASE_NVCC_FLAGS: readonly string[] = Object.freeze([
  '-cubin', '-gencode=arch=compute_90a,code=sm_90a', '-O3', '-std=c++17', '-lineinfo',
]);

export type DefineValue = string | number | boolean;
export type Defines = Readonly<Record<string, DefineValue>>;

export interface CompileOptions {
  /** A `.cu` file name under src/kernels/ (e.g. 'staging.cu'), or an absolute path. */
  source: string;
  /** Inline CUDA source; `source` then only names it (messages, cache file name). Local includes resolve in src/kernels/. */
  sourceText?: string;
  /** -D defines for shape specialisation, e.g. { HIDDEN: 4096, BLOCK_M: 128 }; `true` gives -DNAME, `false` omits. */
  defines?: Defines;
  /** The kernel function the caller will look up (recorded with the result; not a compiler flag). */
  entry?: string;
  /** Extra nvcc flags, appended after the base flags (e.g. ['-Xptxas', '-v']). */
  extraFlags?: readonly string[];
}

export interface CompiledKernel {
  /** Absolute path of the cached cubin. */
  cubinPath: string;
  /** The hex cache key. */
  key: string;
  /** True when the cubin came from the cache. */
  cached: boolean;
  /** Wall time of this call in milliseconds (nvcc time on a miss). */
  millis: number;
  entry?: string;
  /** What nvcc printed on stderr (ptxas -v output, warnings); '' on a cache hit. */
  log: string;
}

/** Where a compile error from nvcc lands: the message holds nvcc's output. */
export class KernelCompileError extends Error {
  readonly source: string;
  readonly nvccOutput: string;
  constructor(source: string, command: string, nvccOutput: string) {
    super(`nvcc failed to compile ${source}:\n${nvccOutput.trim()}\n(command: ${command})`);
    this.name = 'KernelCompileError';
    this.source = source;
    this.nvccOutput = nvccOutput;
  }
}

/** The package root: the nearest folder above this module with megamoe's package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'megamoe') return dir;
      } catch { /* keep looking */ }
    }
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  // dist/src/cuda/compile.js -> ../../.. (the documented layout) when no package.json is found.
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
}

/** src/kernels/ of the package: .cu files are read from the sources, not from dist/. */
export function kernelsDir(): string {
  return join(packageRoot(), 'src', 'kernels');
}

/** The kernel cache directory: $MEGAMOE_CACHE_DIR/kernels, else ~/.cache/megamoe/kernels. */
export function kernelCacheDir(): string {
  const root = process.env.MEGAMOE_CACHE_DIR;
  return root ? join(resolve(root), 'kernels') : join(homedir(), '.cache', 'megamoe', 'kernels');
}

let nvccPath: string | null | undefined;

/** nvcc from $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin, then PATH; null when none is found. */
export function findNvcc(): string | null {
  if (nvccPath !== undefined) return nvccPath;
  const candidates: string[] = [];
  for (const env of ['CUDA_HOME', 'CUDA_PATH']) {
    const v = process.env[env];
    if (v) candidates.push(join(v, 'bin', 'nvcc'));
  }
  candidates.push('/usr/local/cuda/bin/nvcc');
  for (const p of (process.env.PATH ?? '').split(delimiter)) if (p) candidates.push(join(p, 'nvcc'));
  nvccPath = null;
  for (const c of candidates) {
    try {
      if (statSync(c).isFile()) { nvccPath = c; break; }
    } catch { /* not there */ }
  }
  return nvccPath;
}

let nvccVersionText: string | null | undefined;

/** The full `nvcc --version` text (part of the cache key), or null without nvcc. */
export function nvccVersion(): string | null {
  if (nvccVersionText !== undefined) return nvccVersionText;
  const nvcc = findNvcc();
  nvccVersionText = null;
  if (nvcc) {
    try {
      nvccVersionText = execFileSync(nvcc, ['--version'], { encoding: 'utf8' }).trim();
    } catch { /* leave null */ }
  }
  return nvccVersionText;
}

/** "13.0.88" style release from `nvcc --version` (null without nvcc). */
export function nvccRelease(): string | null {
  const text = nvccVersion();
  if (!text) return null;
  const m = /V(\d+\.\d+\.\d+)/.exec(text) ?? /release (\d+\.\d+)/.exec(text);
  return m ? m[1] : text.split('\n').pop() ?? text;
}

function requireNvcc(): string {
  const nvcc = findNvcc();
  if (!nvcc) {
    throw new Error('nvcc not found: install the CUDA toolkit (12.8+), or set CUDA_HOME to its folder, or put nvcc on PATH');
  }
  return nvcc;
}

function resolveSource(source: string): string {
  return isAbsolute(source) ? source : join(kernelsDir(), source);
}

const INCLUDE_RE = /^\s*#\s*include\s*"([^"]+)"/gm;

/**
 * The text of a source and of every local header it includes, recursively, as [name, text] pairs in a stable order.
 * Local includes resolve against the including file's folder, then src/kernels/ (nvcc gets the same -I).
 */
export function collectSources(source: string, sourceText?: string): Array<[string, string]> {
  const mainPath = resolveSource(source);
  const mainText = sourceText ?? readFileOrExplain(mainPath, source);
  const out: Array<[string, string]> = [[basename(source), mainText]];
  const seen = new Set<string>([mainPath]);
  const walk = (text: string, dir: string): void => {
    for (const m of text.matchAll(INCLUDE_RE)) {
      const name = m[1];
      const found = [join(dir, name), join(kernelsDir(), name)].find((p) => existsSync(p));
      if (!found || seen.has(found)) continue; // a toolkit header, or already hashed
      seen.add(found);
      const t = readFileSync(found, 'utf8');
      out.push([name, t]);
      walk(t, dirname(found));
    }
  };
  walk(mainText, sourceText !== undefined ? kernelsDir() : dirname(mainPath));
  return out;
}

function readFileOrExplain(path: string, source: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    throw new Error(`kernel source ${source} not found (looked for ${path}); kernel sources live in src/kernels/ of the package`);
  }
}

/** -D flags from defines, sorted by name so the key does not depend on object order. */
export function defineFlags(defines: Defines = {}): string[] {
  const flags: string[] = [];
  for (const name of Object.keys(defines).sort()) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`invalid define name "${name}": use a C identifier`);
    const v = defines[name];
    if (v === false) continue;
    flags.push(v === true ? `-D${name}` : `-D${name}=${String(v)}`);
  }
  return flags;
}

/** The nvcc arguments for a compile (without -I / -o / the input file). */
export function compileFlags(options: CompileOptions): string[] {
  return [...BASE_NVCC_FLAGS, ...defineFlags(options.defines), ...(options.extraFlags ?? [])];
}

/** The cache key of a compile: stable across processes, changes with source, headers, flags, defines, nvcc. */
export function cacheKey(options: CompileOptions, nvccVersionString = nvccVersion() ?? 'no-nvcc'): string {
  const h = createHash('sha256');
  const part = (s: string): void => { h.update(String(Buffer.byteLength(s))); h.update(':'); h.update(s); };
  part('megamoe-kernel-cache-v1');
  for (const [name, text] of collectSources(options.source, options.sourceText)) { part(name); part(text); }
  for (const f of compileFlags(options)) part(f);
  part(nvccVersionString);
  return h.digest('hex');
}

function cubinPathFor(options: CompileOptions, key: string): string {
  const stem = basename(options.source).replace(/\.cuh?$/, '').replace(/[^A-Za-z0-9_.-]/g, '_');
  return join(kernelCacheDir(), `${stem}-${key.slice(0, 24)}.cubin`);
}

interface Job { nvcc: string; args: string[]; tmpDir: string; tmpOut: string; finalPath: string; command: string }

function prepare(options: CompileOptions, key: string): Job {
  const nvcc = requireNvcc();
  const cacheDir = kernelCacheDir();
  mkdirSync(cacheDir, { recursive: true });
  // The temp folder is inside the cache folder so the final rename stays on one filesystem.
  const tmpDir = mkdtempSync(join(cacheDir, '.tmp-'));
  let input = resolveSource(options.source);
  const includeDirs = [kernelsDir()];
  if (options.sourceText !== undefined) {
    input = join(tmpDir, basename(options.source).endsWith('.cu') ? basename(options.source) : `${basename(options.source)}.cu`);
    writeFileSync(input, options.sourceText);
  } else {
    readFileOrExplain(input, options.source);
    includeDirs.unshift(dirname(input));
  }
  const tmpOut = join(tmpDir, 'out.cubin');
  const args = [...compileFlags(options), ...includeDirs.flatMap((d) => ['-I', d]), '-o', tmpOut, input];
  const command = [nvcc, ...args].map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(' ');
  return { nvcc, args, tmpDir, tmpOut, finalPath: cubinPathFor(options, key), command };
}

function finish(job: Job): void {
  renameSync(job.tmpOut, job.finalPath);
}

function nvccFailure(options: CompileOptions, job: Job, err: unknown): KernelCompileError {
  const e = err as { stderr?: string | Buffer; stdout?: string | Buffer; message?: string };
  const text = `${e.stdout?.toString() ?? ''}${e.stderr?.toString() ?? ''}`.trim() || (e.message ?? String(err));
  return new KernelCompileError(options.source, job.command, text);
}

const inFlight = new Map<string, Promise<CompiledKernel>>();

/**
 * Compiles (or finds in the cache) a kernel; resolves to the cubin's path. Throws KernelCompileError with nvcc's
 * message on a compile error, and a plain Error when nvcc or the source is missing.
 */
export async function compileKernel(options: CompileOptions): Promise<CompiledKernel> {
  const started = performance.now();
  const key = cacheKey(options);
  const finalPath = cubinPathFor(options, key);
  if (existsSync(finalPath)) {
    return { cubinPath: finalPath, key, cached: true, millis: performance.now() - started, entry: options.entry, log: '' };
  }
  // One nvcc per key per process; other processes are covered by the atomic rename.
  const pending = inFlight.get(key);
  if (pending) return pending;
  const work = (async (): Promise<CompiledKernel> => {
    const job = prepare(options, key);
    try {
      let log = '';
      try {
        const r = await execFileAsync(job.nvcc, job.args, { maxBuffer: 64 * 1024 * 1024 });
        log = `${r.stdout}${r.stderr}`.trim();
      } catch (err) {
        throw nvccFailure(options, job, err);
      }
      finish(job);
      return { cubinPath: finalPath, key, cached: false, millis: performance.now() - started, entry: options.entry, log };
    } finally {
      rmSync(job.tmpDir, { recursive: true, force: true });
      inFlight.delete(key);
    }
  })();
  inFlight.set(key, work);
  return work;
}

/** compileKernel, blocking (for launchers that specialise lazily inside synchronous code). */
export function compileKernelSync(options: CompileOptions): CompiledKernel {
  const started = performance.now();
  const key = cacheKey(options);
  const finalPath = cubinPathFor(options, key);
  if (existsSync(finalPath)) {
    return { cubinPath: finalPath, key, cached: true, millis: performance.now() - started, entry: options.entry, log: '' };
  }
  const job = prepare(options, key);
  try {
    const r = spawnSync(job.nvcc, job.args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    if (r.error) throw nvccFailure(options, job, r.error);
    if (r.status !== 0) throw nvccFailure(options, job, { stdout: r.stdout, stderr: r.stderr });
    const log = `${r.stdout}${r.stderr}`.trim();
    finish(job);
    return { cubinPath: finalPath, key, cached: false, millis: performance.now() - started, entry: options.entry, log };
  } finally {
    rmSync(job.tmpDir, { recursive: true, force: true });
  }
}
