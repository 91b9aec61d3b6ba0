// `megamoe serve` as a child process for the end-to-end tests: spawned with the real CLI, its output collected, its
// URL read from the "listening on" line; stop() sends SIGTERM and waits for the exit (the drain).
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

export interface ServeProcess {
  url: string;
  /** Everything the process wrote to stdout and stderr so far. */
  log(): string;
  stop(): Promise<void>;
}

/** Starts `megamoe serve ARGS` and resolves once it listens (rejects with its output if it exits or takes too long). */
export async function startServeProcess(args: string[], env: NodeJS.ProcessEnv, startTimeoutMs = 60_000): Promise<ServeProcess> {
  const child = spawn(process.execPath, [MAIN, 'serve', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d: Buffer) => { log += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { log += d.toString(); });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), startTimeoutMs);
      const poll = setInterval(() => {
        const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
        if (m) { clearTimeout(timer); clearInterval(poll); resolve(m[1]); }
        if (child.exitCode !== null) { clearTimeout(timer); clearInterval(poll); reject(new Error(`server exited:\n${log}`)); }
      }, 50);
    });
    return { url, log: () => log, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
