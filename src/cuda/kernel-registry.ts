// The list of kernel variants CI compiles (`megamoe kernels --check`). Kernel owners register their kernels when
// their launcher module is imported:
//
//   import { registerKernel } from '../cuda/kernel-registry.js';
//   registerKernel({ name: 'staging', source: 'staging.cu', entry: 'stage_tokens',
//     variants: [{ label: 'flash', defines: { HIDDEN: 4096 } }, { label: 'pro', defines: { HIDDEN: 7168 } }] });
//
// `megamoe kernels` imports every compiled module of src/kernels/, so a launcher that registers at import time is
// found without further wiring.
import type { Defines } from './compile.js';

export interface KernelVariant {
  /** Short name of the specialisation, e.g. 'flash' or 'H7168_I3072'. */
  label: string;
  defines: Defines;
}

export interface KernelRegistration {
  /** Unique kernel name, e.g. 'grouped_gemm_fp8'. */
  name: string;
  /** File under src/kernels/, e.g. 'grouped_gemm_fp8.cu'. */
  source: string;
  /** The __global__ function(s) launched, for documentation and for a post-compile symbol check. */
  entry?: string;
  extraFlags?: readonly string[];
  /** One compile per variant; plain define objects get labels from their values. */
  variants: ReadonlyArray<KernelVariant | Defines>;
}

const registry = new Map<string, KernelRegistration>();

/** Registers (or replaces, by name) a kernel and its variants. Safe to call more than once with the same entry. */
export function registerKernel(registration: KernelRegistration): void {
  if (!registration.name || !registration.source) throw new Error('registerKernel needs a name and a source file');
  if (registration.variants.length === 0) throw new Error(`registerKernel("${registration.name}"): list at least one variant (e.g. [{ label: 'default', defines: {} }])`);
  registry.set(registration.name, registration);
}

/** Every registration, sorted by name. */
export function registeredKernels(): KernelRegistration[] {
  return [...registry.values()].sort((a, b) => a.name.localeCompare(b.name));
}

function isVariant(v: KernelVariant | Defines): v is KernelVariant {
  return typeof (v as KernelVariant).label === 'string' && typeof (v as KernelVariant).defines === 'object';
}

/** One variant with a label: a plain define object gets 'NAME=value,...' (or 'default' when empty). */
export function normalizeVariant(v: KernelVariant | Defines): KernelVariant {
  if (isVariant(v)) return v;
  const label = Object.keys(v).sort().map((k) => `${k}=${String(v[k])}`).join(',') || 'default';
  return { label, defines: v };
}

/** Removes every registration (tests). */
export function clearKernelRegistry(): void {
  registry.clear();
}
