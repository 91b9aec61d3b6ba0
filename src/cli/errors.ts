// What the CLI prints for errors that reach main.ts: the package version, and file-system errors (from any module,
// e.g. the kernel cache in src/cuda) translated into one line that names the folder and the variable to change.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cacheRoot, errnoReason, fixFor } from '../util/writable-dir.js';

/** The version in package.json (dist/src/cli/main.js -> ../../../package.json). */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

const WRITE_ERRORS = new Set(['EACCES', 'EPERM', 'EROFS', 'ENOSPC', 'ENOTDIR', 'EEXIST']);

/** A one-line message for an errno error on a path under the cache folder; undefined for anything else. */
export function describeFsError(err: unknown): string | undefined {
  const e = err as NodeJS.ErrnoException;
  if (!(err instanceof Error) || typeof e.code !== 'string' || typeof e.path !== 'string' || !WRITE_ERRORS.has(e.code)) return undefined;
  const root = cacheRoot();
  const p = path.resolve(e.path);
  if (p === root || p.startsWith(root + path.sep) || root.startsWith(p + path.sep)) {
    return `cannot write to the cache folder ${root} (${errnoReason(e.code)} at ${p}): ${fixFor('MEGAMOE_CACHE_DIR')}`;
  }
  return undefined;
}
