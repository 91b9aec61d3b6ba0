// Several files written whole or not at all (issue 9, `--dump`): each is written under a temporary name in the
// target folder (removed if the process is interrupted), and only when every one is complete are they renamed into
// place. A failure (or a signal) while writing leaves the folder as it was; renames in one folder do not fail for
// lack of space, so the set appears complete or, at worst when killed between two renames, with the newer files
// first in the order given.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { registerTemp } from './temp-dirs.js';

export interface PendingFile {
  /** File name inside the folder. */
  name: string;
  /** Writes the complete file at `tempPath`. */
  write(tempPath: string): void;
}

/** Writes `files` into `dir` (created if needed); returns their final paths. */
export function writeFilesAtomically(dir: string, files: readonly PendingFile[]): string[] {
  const abs = path.resolve(dir);
  fs.mkdirSync(abs, { recursive: true });
  const tag = `${process.pid}-${Math.floor(Math.random() * 1e9)}`;
  const temps = files.map((f) => ({ file: f, temp: path.join(abs, `.${f.name}.tmp-${tag}`), final: path.join(abs, f.name), guard: undefined as { release(): void } | undefined }));
  try {
    for (const t of temps) {
      t.guard = registerTemp(t.temp);
      t.file.write(t.temp);
      if (!fs.existsSync(t.temp)) throw new Error(`writeFilesAtomically: ${t.file.name} was not written`);
    }
    for (const t of temps) { fs.renameSync(t.temp, t.final); t.guard?.release(); t.guard = undefined; }
    return temps.map((t) => t.final);
  } finally {
    for (const t of temps) {
      if (t.guard) { fs.rmSync(t.temp, { recursive: true, force: true }); t.guard.release(); }
    }
  }
}
