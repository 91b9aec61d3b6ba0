// Runs the built `megamoe` command (dist/src/cli/main.js) as a child process for the end-to-end tests.
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const MEGAMOE_MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

export interface CliResult {
  code: number | null;
  out: string;
  err: string;
}

/** `megamoe ...args`, stdout and stderr collected; past timeoutMs it is stopped (SIGTERM, then SIGKILL 5 s later). */
export function runMegamoe(args: string[], timeoutMs: number): Promise<CliResult> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [MEGAMOE_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { err += c.toString(); });
    // SIGTERM first: the supervisor then stops its ranks itself (no orphan).
    const timer = setTimeout(() => { child.kill('SIGTERM'); setTimeout(() => child.kill('SIGKILL'), 5000); }, timeoutMs);
    child.on('exit', (code) => { clearTimeout(timer); res({ code, out, err }); });
  });
}
