// Compile + load + look up in one step, with the loaded modules cached per context and cache key, so a launcher can
// ask for its specialised kernel on every construction without reloading the cubin.
import { compileKernel, compileKernelSync, type CompileOptions, type CompiledKernel } from './compile.js';
import { CudaContext, ensureContext } from './device.js';
import { CudaModule, type Kernel } from './module.js';

export interface LoadKernelOptions extends CompileOptions {
  /** The kernel function to look up (its extern "C" name). */
  entry: string;
}

const modules = new Map<string, { module: CudaModule; context: CudaContext }>();

function moduleFor(compiled: CompiledKernel, ctx: CudaContext): CudaModule {
  const id = `${ctx.device}:${compiled.key}`;
  const hit = modules.get(id);
  if (hit && !hit.module.disposed && !hit.context.disposed) return hit.module;
  const module = CudaModule.load(compiled.cubinPath);
  modules.set(id, { module, context: ctx });
  return module;
}

/** Compiles (cached) and loads the kernel `options.entry` of `options.source` in the current context. */
export async function loadKernel(options: LoadKernelOptions): Promise<Kernel> {
  const compiled = await compileKernel(options);
  return moduleFor(compiled, ensureContext()).getKernel(options.entry);
}

/** loadKernel, blocking. */
export function loadKernelSync(options: LoadKernelOptions): Kernel {
  const compiled = compileKernelSync(options);
  return moduleFor(compiled, ensureContext()).getKernel(options.entry);
}

/** Unloads every module loadKernel loaded (kernels obtained from them become invalid). */
export function unloadAllKernels(): void {
  for (const { module, context } of modules.values()) {
    if (!module.disposed && !context.disposed) {
      context.makeCurrent();
      module.dispose();
    }
  }
  modules.clear();
}
