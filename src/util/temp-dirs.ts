// Temporary files and folders that must not outlive an interrupted run (issue 9): make-checkpoint's
// `<out>.partial-<pid>-<n>` folder, a dump's temp files. Registered paths are removed on SIGINT, SIGTERM and SIGHUP
// (then the signal is re-raised, so the process still dies of it with the usual exit status) and on exit.
// A run killed harder than that (SIGKILL, power loss) leaves its folder behind with an owner marker inside;
// `cleanStaleTemps` removes such folders on a later run once their owner process is gone.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const live = new Set<string>();
const SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let installed = false;

function removeAll(): void {
  for (const p of live) {
    try { fs.rmSync(p, { recursive: true, force: true }); } catch { /* best effort while dying */ }
  }
  live.clear();
}

function onSignal(signal: NodeJS.Signals): void {
  removeAll();
  uninstall();
  process.kill(process.pid, signal); // no listener left: the default action ends the process as the signal would
}

function onExit(): void { removeAll(); }

function install(): void {
  if (installed) return;
  installed = true;
  for (const s of SIGNALS) process.on(s, onSignal);
  process.on('exit', onExit);
}

function uninstall(): void {
  if (!installed) return;
  installed = false;
  for (const s of SIGNALS) process.removeListener(s, onSignal);
  process.removeListener('exit', onExit);
}

/**
 * Removes `p` (file or folder) if this process is interrupted or exits before `release()` is called. The signal
 * handlers exist only while something is registered, so a run with nothing to clean keeps Node's defaults.
 */
export function registerTemp(p: string): { release(): void } {
  const abs = path.resolve(p);
  live.add(abs);
  install();
  return {
    release() {
      live.delete(abs);
      if (live.size === 0) uninstall();
    },
  };
}

/** The paths registered now (for tests). */
export function registeredTemps(): string[] { return [...live]; }

/** The owner marker written into every temp folder: only folders holding it are ever cleaned. */
export const OWNER_MARKER = '.megamoe-temp-owner.json';

export function writeOwnerMarker(dir: string): void {
  fs.writeFileSync(path.join(dir, OWNER_MARKER), JSON.stringify({ pid: process.pid, host: os.hostname(), started: new Date().toISOString() }) + '\n');
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

/**
 * Removes folders in `parent` whose name matches `pattern` and that hold an owner marker of a process on this host
 * that is no longer running. Returns what was removed. Never touches a folder without the marker.
 */
export function cleanStaleTemps(parent: string, pattern: RegExp): string[] {
  let entries: string[];
  try { entries = fs.readdirSync(parent); } catch { return []; }
  const removed: string[] = [];
  for (const name of entries) {
    if (!pattern.test(name)) continue;
    const dir = path.join(parent, name);
    let owner: { pid?: unknown; host?: unknown };
    try { owner = JSON.parse(fs.readFileSync(path.join(dir, OWNER_MARKER), 'utf8')); } catch { continue; }
    if (typeof owner.pid !== 'number' || owner.host !== os.hostname() || owner.pid === process.pid || alive(owner.pid)) continue;
    try { fs.rmSync(dir, { recursive: true, force: true }); removed.push(dir); } catch { /* someone else's race; leave it */ }
  }
  return removed;
}
