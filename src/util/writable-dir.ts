// Folders megamoe writes into (the cache, --out, --dump): checked up front, and a folder that cannot be written is
// refused with the variable or flag that chose it, so the user knows what to change (issue 9).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** `$MEGAMOE_CACHE_DIR`, or `~/.cache/megamoe`: the root of the default checkpoint and the kernel cache. */
export function cacheRoot(): string {
  const env = process.env.MEGAMOE_CACHE_DIR;
  return env ? path.resolve(env) : path.join(os.homedir(), '.cache', 'megamoe');
}

/** What to tell the user for a setting: an environment variable (all caps) or a command-line flag. */
export function fixFor(setting: string): string {
  return setting.startsWith('--') ? `pass ${setting} a folder you can write to` : `set ${setting} to a folder you can write to`;
}

const REASONS: Readonly<Record<string, string>> = {
  EACCES: 'permission denied', EPERM: 'operation not permitted', EROFS: 'read-only file system',
  ENOTDIR: 'a parent is a file, not a folder', EEXIST: 'exists and is not a folder', ENOSPC: 'no space left on the device',
  ENOENT: 'no such folder',
};

export function errnoReason(code: string | undefined): string {
  return (code && REASONS[code]) ?? code ?? 'unknown error';
}

export class UnwritableDirError extends Error {
  readonly dir: string;
  /** The variable or flag that chose the folder (MEGAMOE_CACHE_DIR, --out, --dump, ...). */
  readonly setting: string;
  readonly code: string | undefined;
  constructor(dir: string, setting: string, code: string | undefined, what = 'folder') {
    super(`cannot write to the ${what} ${dir} (${errnoReason(code)}): ${fixFor(setting)}`);
    this.name = 'UnwritableDirError';
    this.dir = dir; this.setting = setting; this.code = code;
  }
}

/** Creates `dir` (and parents) if needed and checks that it is a writable folder; throws UnwritableDirError. */
export function ensureWritableDir(dir: string, setting: string, what = 'folder'): string {
  const abs = path.resolve(dir);
  try {
    fs.mkdirSync(abs, { recursive: true });
    if (!fs.statSync(abs).isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'EEXIST' });
    fs.accessSync(abs, fs.constants.W_OK | fs.constants.X_OK);
  } catch (err) {
    throw new UnwritableDirError(abs, setting, (err as NodeJS.ErrnoException).code, what);
  }
  return abs;
}

/**
 * Checks, without creating anything, that `dir` either is a writable folder or could be created: its nearest
 * existing ancestor is a writable folder. Throws UnwritableDirError naming `setting`.
 */
export function checkCreatableDir(dir: string, setting: string, what = 'folder'): string {
  const abs = path.resolve(dir);
  let p = abs;
  for (;;) {
    let st: fs.Stats | undefined;
    try { st = fs.statSync(p); } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw new UnwritableDirError(abs, setting, code, what);
    }
    if (st) {
      if (!st.isDirectory()) throw new UnwritableDirError(abs, setting, p === abs ? 'EEXIST' : 'ENOTDIR', what);
      try { fs.accessSync(p, fs.constants.W_OK | fs.constants.X_OK); } catch (err) {
        throw new UnwritableDirError(abs, setting, (err as NodeJS.ErrnoException).code, what);
      }
      return abs;
    }
    const up = path.dirname(p);
    if (up === p) throw new UnwritableDirError(abs, setting, 'ENOENT', what);
    p = up;
  }
}
