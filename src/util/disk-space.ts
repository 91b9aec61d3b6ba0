// Free-space check before a large write (issue 9): refuse up front, with the size needed, instead of filling the disk
// halfway through a 6.5 GB checkpoint.
import * as fs from 'node:fs';
import * as path from 'node:path';

export class InsufficientSpaceError extends Error {
  readonly dir: string;
  readonly needed: number;
  readonly available: number;
  constructor(dir: string, needed: number, available: number, fix: string) {
    super(`not enough free space in ${dir}: this needs ${formatSize(needed)}, ${formatSize(available)} is free: ${fix}`);
    this.name = 'InsufficientSpaceError';
    this.dir = dir; this.needed = needed; this.available = available;
  }
}

export function formatSize(n: number): string {
  if (n >= 1e12) return `${(n / 1e12).toFixed(2)} TB`;
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

export type StatFs = (p: string) => { bavail: number | bigint; bsize: number | bigint };

/** Bytes available to this user on the file system holding `dir` (its nearest existing ancestor); undefined if unknown. */
export function freeBytes(dir: string, statfs: StatFs = fs.statfsSync): number | undefined {
  let p = path.resolve(dir);
  while (!fs.existsSync(p) && path.dirname(p) !== p) p = path.dirname(p);
  try {
    const s = statfs(p);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return undefined;
  }
}

/** Throws InsufficientSpaceError when fewer than `needed` bytes are free where `dir` is (or would be). */
export function ensureFreeSpace(dir: string, needed: number, fix: string, statfs: StatFs = fs.statfsSync): void {
  const available = freeBytes(dir, statfs);
  if (available !== undefined && available < needed) throw new InsufficientSpaceError(path.resolve(dir), needed, available, fix);
}
