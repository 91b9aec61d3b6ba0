// Where the serving parts come from: the DeepSeek-V4 model (src/model/index.ts: loadModel) and the
// tokenizer/generation parts (src/generate/engine-parts.ts: createEngineParts, the adapter from the generation
// layer's classes onto src/engine/parts.ts). Both are imported dynamically, each in one place, so the server
// builds and its tests run before those modules exist, and their absence is one clear error at start-up.
import type { CausalLM } from '../model/causal-lm.js';
import type { GpuLoadSizes } from '../model/index.js';
import type { EngineParts } from './parts.js';

export class ServingPartMissingError extends Error {
  readonly part: string;
  constructor(part: string, detail: string) {
    super(`cannot serve: ${part} ${detail}`);
    this.name = 'ServingPartMissingError';
    this.part = part;
  }
}

export interface LoadPartsOptions {
  /** MoE backend name as resolved from --kernel-config ('auto' allowed). */
  backend: string;
  enableExpertParallel: boolean;
  /** Where the forward runs (serve --device): cpu (default) or gpu, the whole step on one GPU with these sizes. */
  device?: 'cpu' | 'gpu';
  gpu?: GpuLoadSizes;
}

/** What src/model/index.ts is expected to export. */
interface ModelModule {
  loadModel(dir: string, opts: { backend: string; enableExpertParallel?: boolean; device?: 'cpu' | 'gpu'; gpu?: LoadPartsOptions['gpu'] }): Promise<CausalLM>;
}
/** What src/generate/engine-parts.ts is expected to export. */
interface GenerationModule {
  createEngineParts(modelDir: string, model: CausalLM): Promise<Omit<EngineParts, 'model'>> | Omit<EngineParts, 'model'>;
}

async function importPart<T>(file: string, exportName: string, part: string): Promise<T> {
  // A computed URL: tsc does not resolve it, so this module compiles while the target does not exist yet.
  const url = new URL(file, import.meta.url).href;
  let mod: Record<string, unknown>;
  try {
    mod = await import(url) as Record<string, unknown>;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ERR_MODULE_NOT_FOUND' && e.message.includes(file.replace(/^\.\.\//, ''))) {
      throw new ServingPartMissingError(part, `is not built in this checkout (src/${file.replace(/^\.\.\//, '').replace(/\.js$/, '.ts')} does not exist yet)`);
    }
    throw new ServingPartMissingError(part, `failed to load: ${e.message}`);
  }
  if (typeof mod[exportName] !== 'function') {
    throw new ServingPartMissingError(part, `module src/${file.replace(/^\.\.\//, '').replace(/\.js$/, '.ts')} exports no function '${exportName}'`);
  }
  return mod as T;
}

function importBoth(): Promise<[ModelModule, GenerationModule]> {
  return Promise.all([
    importPart<ModelModule>('../model/index.js', 'loadModel', 'the DeepSeek-V4 model'),
    importPart<GenerationModule>('../generate/engine-parts.js', 'createEngineParts', 'the tokenizer and generation parts'),
  ]);
}

/** Throws ServingPartMissingError now if a module is missing (cheap: no weight is read). */
export async function probeEngineParts(): Promise<void> {
  await importBoth();
}

/** Loads the model from `dir` and builds the engine's parts around it. */
export async function loadEngineParts(dir: string, opts: LoadPartsOptions): Promise<EngineParts> {
  const [m, g] = await importBoth();
  const model = await m.loadModel(dir, { backend: opts.backend, enableExpertParallel: opts.enableExpertParallel, device: opts.device, gpu: opts.gpu });
  const rest = await g.createEngineParts(dir, model);
  return { ...rest, model };
}
