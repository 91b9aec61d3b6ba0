// A progress bar for long host work (writing a 6.5 GB checkpoint, loading 256 experts), drawn on stderr with
// cli-progress. It stays silent when stderr is not a terminal, under `node --test`, or with
// MEGAMOE_NO_PROGRESS=1, so logs and test output never fill with carriage returns.
// Updates are plain synchronous calls: cli-progress redraws inside update() (synchronousUpdate), so a bar
// also moves while the event loop is blocked by synchronous generation or file I/O.
import cliProgress from 'cli-progress';

export interface Progress {
  /** Sets the absolute amount done. */
  update(done: number): void;
  /** Adds to the amount done. */
  increment(delta?: number): void;
  /** Finishes the bar (idempotent). */
  stop(): void;
}

export interface ProgressOptions {
  label: string;
  total: number;
  /** 'bytes' shows MB and MB/s; 'items' shows counts. */
  unit?: 'bytes' | 'items';
  /** Force on or off; by default on only when `progressWanted()` says so. */
  enabled?: boolean;
}

/** Whether a progress bar would be seen by a person: stderr is a TTY and we are not in a test or told not to. */
export function progressWanted(stream: NodeJS.WriteStream = process.stderr): boolean {
  if (process.env.MEGAMOE_NO_PROGRESS && process.env.MEGAMOE_NO_PROGRESS !== '0') return false;
  if (process.env.NODE_TEST_CONTEXT) return false; // set by `node --test` in every test process
  return Boolean(stream.isTTY);
}

const SILENT: Progress = { update() {}, increment() {}, stop() {} };

function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

export function createProgress(options: ProgressOptions): Progress {
  const enabled = options.enabled ?? progressWanted();
  if (!enabled || !(options.total > 0)) return SILENT;
  const bytes = (options.unit ?? 'items') === 'bytes';
  const bar = new cliProgress.SingleBar({
    format: bytes
      ? `${options.label} [{bar}] {percentage}% | {doneH} / {totalH} | {rate} | ETA {eta_formatted}`
      : `${options.label} [{bar}] {percentage}% | {value}/{total} | ETA {eta_formatted}`,
    stream: process.stderr,
    hideCursor: null,
    barsize: 30,
    etaBuffer: 50,
  }, cliProgress.Presets.shades_classic);
  const start = Date.now();
  let done = 0;
  let stopped = false;
  const payload = () => {
    const seconds = Math.max((Date.now() - start) / 1000, 1e-3);
    return { doneH: formatBytes(done), totalH: formatBytes(options.total), rate: `${(done / 1e6 / seconds).toFixed(0)} MB/s` };
  };
  bar.start(options.total, 0, payload());
  return {
    update(value: number) { done = value; if (!stopped) bar.update(done, payload()); },
    increment(delta = 1) { done += delta; if (!stopped) bar.update(done, payload()); },
    stop() { if (!stopped) { stopped = true; bar.update(done, payload()); bar.stop(); } },
  };
}
