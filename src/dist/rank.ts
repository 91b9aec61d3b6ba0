// Rank identity and world size, in one place (as llm.c's multi-GPU config): which rank this process is, how many
// ranks there are, and which GPU it is bound to. The supervisor (supervisor.ts) writes these into each rank's
// environment; a rank reads them once through `rankFromEnv`. Nothing else in megamoe reads the variables.

/** Environment variables the supervisor sets for each rank process. */
export const RANK_ENV = {
  rank: 'MEGAMOE_RANK',
  worldSize: 'MEGAMOE_WORLD_SIZE',
  device: 'MEGAMOE_DEVICE',
  /** Absolute path or file URL of the module whose default export is the rank's program (rank-entry.ts). */
  program: 'MEGAMOE_RANK_PROGRAM',
  /** JSON given to the program as `ctx.args`. */
  args: 'MEGAMOE_RANK_ARGS',
} as const;

/** The most ranks one supervisor starts (one host; an NVLink domain has at most 8 GPUs here, 72 on NVL72). */
export const MAX_WORLD_SIZE = 128;

export interface RankIdentity {
  /** 0 .. worldSize-1. */
  readonly rank: number;
  readonly worldSize: number;
  /** The CUDA device ordinal this rank is bound to (several ranks may share device 0 in the single-GPU mode). */
  readonly device: number;
}

function parseIndex(name: string, raw: string | undefined): number {
  if (raw === undefined || raw === '') throw new RangeError(`${name} is not set: this process was not started by the megamoe rank supervisor`);
  if (!/^\d+$/.test(raw.trim())) throw new RangeError(`${name} must be a non-negative integer, got '${raw}'`);
  return Number(raw.trim());
}

/** Checks an identity; throws a RangeError naming the bad field. */
export function validateRankIdentity(id: RankIdentity): RankIdentity {
  const { rank, worldSize, device } = id;
  if (!Number.isInteger(worldSize) || worldSize < 1 || worldSize > MAX_WORLD_SIZE) {
    throw new RangeError(`world size must be an integer in [1, ${MAX_WORLD_SIZE}], got ${worldSize}`);
  }
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) {
    throw new RangeError(`rank must be an integer in [0, ${worldSize - 1}] for a world of ${worldSize}, got ${rank}`);
  }
  if (!Number.isInteger(device) || device < 0) throw new RangeError(`device must be a non-negative integer, got ${device}`);
  return { rank, worldSize, device };
}

/** The identity of the current process from its environment (throws a RangeError when absent or malformed). */
export function rankFromEnv(env: NodeJS.ProcessEnv = process.env): RankIdentity {
  return validateRankIdentity({
    rank: parseIndex(RANK_ENV.rank, env[RANK_ENV.rank]),
    worldSize: parseIndex(RANK_ENV.worldSize, env[RANK_ENV.worldSize]),
    device: parseIndex(RANK_ENV.device, env[RANK_ENV.device]),
  });
}

/** The environment entries that give a process its identity. */
export function rankEnv(id: RankIdentity): Record<string, string> {
  const v = validateRankIdentity(id);
  return { [RANK_ENV.rank]: String(v.rank), [RANK_ENV.worldSize]: String(v.worldSize), [RANK_ENV.device]: String(v.device) };
}

/**
 * The device of each rank: `devices` when given (one per rank, or one for all: the single-GPU mode, every rank on
 * that device), else rank i on device i.
 */
export function assignDevices(worldSize: number, devices?: readonly number[]): number[] {
  validateRankIdentity({ rank: 0, worldSize, device: 0 });
  if (!devices || devices.length === 0) return Array.from({ length: worldSize }, (_, i) => i);
  if (devices.length !== 1 && devices.length !== worldSize) {
    throw new RangeError(`devices: give one device for all ranks or one per rank (${worldSize}), got ${devices.length}`);
  }
  const out = devices.length === 1 ? new Array<number>(worldSize).fill(devices[0]) : [...devices];
  for (const d of out) if (!Number.isInteger(d) || d < 0) throw new RangeError(`devices: ${d} is not a device ordinal`);
  return out;
}
