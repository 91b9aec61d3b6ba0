// Backends by name: 'reference' (CPU, always there), 'unfused' and 'mega_moe' (GPU), the vLLM-style alias
// 'deep_gemm_mega_moe' for 'mega_moe', and 'auto' (the fastest one that can run here).
//
// The GPU backends live in their own modules, loaded only when asked for, so a machine without CUDA never
// touches the FFI: src/backends/unfused.ts and src/backends/mega-moe.ts each export
//     export const provider: BackendProvider
// whose probe() says whether this machine can run it (driver, sm_90 GPU, kernels built) and why not.
// Until such a module exists, the registry reports the backend as not available, with the reason.
import type { MoeBackend } from '../moe/backend.js';
import { ReferenceBackend } from './reference.js';

export type BackendName = 'reference' | 'unfused' | 'mega_moe';
export const BACKEND_NAMES: readonly BackendName[] = ['reference', 'unfused', 'mega_moe'];
export const BACKEND_ALIASES: Readonly<Record<string, BackendName>> = { deep_gemm_mega_moe: 'mega_moe' };
/** What 'auto' tries, best first. */
export const AUTO_ORDER: readonly BackendName[] = ['mega_moe', 'unfused', 'reference'];

export interface BackendAvailability {
  ok: boolean;
  /** Why not (or, when ok, what it will run on). */
  reason: string;
}

export interface BackendProvider {
  readonly name: BackendName;
  readonly description: string;
  probe(): Promise<BackendAvailability>;
  create(): Promise<MoeBackend> | MoeBackend;
}

export class BackendUnavailableError extends Error {
  readonly backend: string;
  constructor(backend: string, reason: string) {
    super(`backend ${backend} needs a Hopper GPU / is not available: ${reason}`);
    this.name = 'BackendUnavailableError';
    this.backend = backend;
  }
}

const referenceProvider: BackendProvider = {
  name: 'reference',
  description: 'CPU reference: the exact FP8 rounding points (slow)',
  probe: async () => ({ ok: true, reason: 'runs anywhere' }),
  create: () => new ReferenceBackend(),
};

/** A provider whose module is imported on first use; a missing module means "not built here". */
function lazyProvider(name: BackendName, file: string, description: string): BackendProvider {
  let loading: Promise<BackendProvider | string> | undefined;
  const load = (): Promise<BackendProvider | string> => {
    loading ??= import(new URL(`./${file}`, import.meta.url).href).then(
      (m: { provider?: BackendProvider }) => m.provider ?? `module src/backends/${file.replace(/\.js$/, '.ts')} exports no 'provider'`,
      (err: NodeJS.ErrnoException) => (err.code === 'ERR_MODULE_NOT_FOUND' && err.message.includes(file)
        ? `not built in this checkout (src/backends/${file.replace(/\.js$/, '.ts')} does not exist yet)`
        : `its module failed to load: ${err.message}`),
    );
    return loading;
  };
  return {
    name,
    description,
    probe: async () => {
      const p = await load();
      return typeof p === 'string' ? { ok: false, reason: p } : p.probe();
    },
    create: async () => {
      const p = await load();
      if (typeof p === 'string') throw new BackendUnavailableError(name, p);
      return p.create();
    },
  };
}

const providers = new Map<BackendName, BackendProvider>([
  ['reference', referenceProvider],
  ['unfused', lazyProvider('unfused', 'unfused.js', 'GPU, one launch per stage (staging, grouped GEMMs, combine)')],
  ['mega_moe', lazyProvider('mega_moe', 'mega-moe.js', 'GPU, the fused FP8 MegaMoE kernel (sm_90a, expert parallel)')],
]);

/** Replaces a backend's provider (the GPU modules may register themselves; tests use it too). */
export function registerBackend(provider: BackendProvider): void {
  providers.set(provider.name, provider);
}

/** Canonical name for a user-given one ('auto' stays 'auto'); unknown names are refused with the list. */
export function resolveBackendName(name: string): BackendName | 'auto' {
  const n = name.trim().toLowerCase();
  if (n === 'auto') return 'auto';
  if ((BACKEND_NAMES as readonly string[]).includes(n)) return n as BackendName;
  const alias = BACKEND_ALIASES[n];
  if (alias) return alias;
  throw new Error(`unknown backend '${name}': choose one of ${BACKEND_NAMES.join(', ')}, auto `
    + `(aliases: ${Object.entries(BACKEND_ALIASES).map(([a, b]) => `${a} = ${b}`).join(', ')})`);
}

export function getProvider(name: BackendName): BackendProvider {
  return providers.get(name)!;
}

export interface ListedBackend extends BackendAvailability {
  name: BackendName;
  description: string;
}

export async function listBackends(): Promise<ListedBackend[]> {
  const out: ListedBackend[] = [];
  for (const name of BACKEND_NAMES) {
    const p = getProvider(name);
    out.push({ name, description: p.description, ...(await p.probe()) });
  }
  return out;
}

export interface CreatedBackend {
  backend: MoeBackend;
  name: BackendName;
  /** For 'auto': which backends were passed over and why. */
  note?: string;
}

/** Creates a backend by name or alias, or the best available for 'auto'. Throws BackendUnavailableError. */
export async function createBackend(requested: string): Promise<CreatedBackend> {
  const name = resolveBackendName(requested);
  if (name !== 'auto') {
    // Probe first, so every provider (registered or lazily loaded) is refused the same way.
    const a = await getProvider(name).probe();
    if (!a.ok) throw new BackendUnavailableError(name, a.reason);
    return { backend: await getProvider(name).create(), name };
  }
  const skipped: string[] = [];
  for (const candidate of AUTO_ORDER) {
    const a = await getProvider(candidate).probe();
    if (a.ok) {
      return {
        backend: await getProvider(candidate).create(),
        name: candidate,
        note: `auto chose ${candidate}${skipped.length ? ` (${skipped.join('; ')})` : ''}`,
      };
    }
    skipped.push(`${candidate}: ${a.reason}`);
  }
  throw new BackendUnavailableError('auto', skipped.join('; '));
}
