// The rank entry module: what the supervisor forks for every rank. Reads the identity (rank.ts), opens the control
// channel (rank-channel.ts), imports the rank program named by MEGAMOE_RANK_PROGRAM and runs its default export
// `(ctx: RankContext) => Promise<unknown>`. A throw becomes an 'error' message (name, message, the phase) and exit 1;
// a return value becomes 'done' and exit 0. The program must not call process.exit itself.
// Leftover handles do not keep a finished rank alive: it exits once 'done' is handed to the channel.
import { rankFromEnv, RANK_ENV } from './rank.js';
import { RankChannel, type RankContext } from './rank-channel.js';

export type RankProgram = (ctx: RankContext) => Promise<unknown> | unknown;

function describe(err: unknown): { name: string; message: string; code?: string } {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return { name: err.name, message: err.message, ...(typeof code === 'string' ? { code } : {}) };
  }
  return { name: 'Error', message: String(err) };
}

async function main(): Promise<void> {
  const id = rankFromEnv();
  const args = JSON.parse(process.env[RANK_ENV.args] ?? 'null') as unknown;
  const channel = new RankChannel(id, args);
  try {
    const url = process.env[RANK_ENV.program];
    if (!url) throw new Error(`${RANK_ENV.program} is not set`);
    channel.phase('load-program');
    const mod = await import(url) as { default?: unknown };
    if (typeof mod.default !== 'function') throw new TypeError(`rank program ${url} has no default export function`);
    channel.phase('run');
    const result = await (mod.default as RankProgram)(channel);
    await channel.sendAndFlush({ t: 'done', result: result === undefined ? null : result });
    process.exit(0); // a program's leftover handles (timers, sockets) must not keep a finished rank alive
  } catch (err) {
    await channel.sendAndFlush({ t: 'error', phase: channel.currentPhase, ...describe(err) });
    process.exit(1);
  }
}

main().catch((err) => {
  // Only reached when the identity or the channel itself is broken: there is nobody to tell but stderr.
  process.stderr.write(`megamoe rank: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
