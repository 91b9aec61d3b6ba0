// `--kernel-config JSON` as the seed passes it to vLLM (`'{"moe_backend":"deep_gemm_mega_moe"}'`): parsed and
// checked before anything loads. An unknown key or value is refused with the list of valid ones, so a typo never
// silently falls back to a default backend.
import { AUTO_ORDER, BACKEND_ALIASES, BACKEND_NAMES, resolveBackendName, type BackendName } from '../backends/index.js';

export interface KernelConfig {
  /** Canonical backend name, or 'auto' (the best that can run here). */
  moe_backend: BackendName | 'auto';
}

export const KERNEL_CONFIG_DEFAULTS: Readonly<KernelConfig> = { moe_backend: 'auto' };

/** Each key and the values it takes (aliases included), for the messages. */
const VALID: Readonly<Record<keyof KernelConfig, readonly string[]>> = {
  moe_backend: [...BACKEND_NAMES, ...Object.keys(BACKEND_ALIASES), 'auto'],
};

export class KernelConfigError extends Error {
  constructor(message: string) {
    super(`--kernel-config: ${message}`);
    this.name = 'KernelConfigError';
  }
}

export function parseKernelConfig(text: string | undefined): KernelConfig {
  if (text === undefined || text.trim() === '') return { ...KERNEL_CONFIG_DEFAULTS };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new KernelConfigError(`not valid JSON (${(err as Error).message}); example: --kernel-config '{"moe_backend":"unfused"}'`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new KernelConfigError(`expected a JSON object such as {"moe_backend":"unfused"}, got ${text}`);
  }
  const out: KernelConfig = { ...KERNEL_CONFIG_DEFAULTS };
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    if (!(key in VALID)) {
      throw new KernelConfigError(`unknown key "${key}"; valid keys: ${Object.keys(VALID).join(', ')}`);
    }
    const k = key as keyof KernelConfig;
    if (typeof value !== 'string' || !VALID[k].includes(value.trim().toLowerCase())) {
      throw new KernelConfigError(`${key} ${JSON.stringify(value)} is not valid; choose one of ${VALID[k].join(', ')} `
        + `(auto tries ${AUTO_ORDER.join(', ')} in that order)`);
    }
    out.moe_backend = resolveBackendName(value);
  }
  return out;
}
