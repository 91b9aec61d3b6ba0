// Opening a shared library through koffi: the first candidate that loads AND binds wins; every failure is kept
// as a readable reason, so "not available here" can say exactly what was tried.
import koffi from 'koffi';

export type LibraryLoad<T> = { value: T; name: string } | { errors: string[] };

/**
 * Tries `candidates` in order: koffi.load, then `bind` (which declares the functions and may throw on a missing
 * symbol, described by `missingSymbol`). Never throws.
 */
export function loadFirstLibrary<T>(candidates: readonly string[], bind: (lib: koffi.IKoffiLib) => T,
  missingSymbol: string): LibraryLoad<T> {
  const errors: string[] = [];
  for (const name of candidates) {
    let lib: koffi.IKoffiLib;
    try {
      lib = koffi.load(name);
    } catch (err) {
      errors.push(`${name}: ${(err instanceof Error ? err.message : String(err)).replace(/^Failed to load shared library: /, '')}`);
      continue;
    }
    try {
      return { value: bind(lib), name };
    } catch (err) {
      errors.push(`${name} lacks ${missingSymbol}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return { errors };
}
