// A manifest of a folder's files (size and SHA-256), written with the embedded default checkpoint so that damaged
// cached files (truncated, bit-flipped, replaced) are noticed and the default rebuilt (issue 9). Checking the tiny
// default (3.3 MB) costs ~7 ms per run (measured).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const MANIFEST_FILE = 'megamoe-manifest.json';

interface Manifest { files: Record<string, { size: number; sha256: string }> }

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Writes MANIFEST_FILE listing every other regular file of `dir`. */
export function writeManifest(dir: string): void {
  const files: Manifest['files'] = {};
  for (const name of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, name);
    if (name === MANIFEST_FILE || !fs.statSync(p).isFile()) continue;
    files[name] = { size: fs.statSync(p).size, sha256: sha256(p) };
  }
  fs.writeFileSync(path.join(dir, MANIFEST_FILE), JSON.stringify({ files }, null, 2) + '\n');
}

/** Undefined when every listed file is present with its size and hash; else what is wrong (first problem). */
export function verifyManifest(dir: string): string | undefined {
  let m: Manifest;
  try {
    m = JSON.parse(fs.readFileSync(path.join(dir, MANIFEST_FILE), 'utf8')) as Manifest;
    if (typeof m.files !== 'object' || m.files === null || Object.keys(m.files).length === 0) return `${MANIFEST_FILE} lists no files`;
  } catch {
    return `${MANIFEST_FILE} is missing or unreadable`;
  }
  // Sizes first (no reads), then hashes.
  for (const [name, want] of Object.entries(m.files)) {
    let size: number;
    try { size = fs.statSync(path.join(dir, name)).size; } catch { return `${name} is missing`; }
    if (size !== want.size) return `${name} is ${size} bytes, ${want.size} expected`;
  }
  for (const [name, want] of Object.entries(m.files)) {
    if (sha256(path.join(dir, name)) !== want.sha256) return `${name} does not match its SHA-256`;
  }
  return undefined;
}
