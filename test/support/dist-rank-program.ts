// A rank program for the supervisor tests (test/dist-supervisor.test.ts): what it does is chosen by ctx.args.mode.
import type { RankContext } from '../../src/dist/rank-channel.js';
import { GuardError } from '../../src/moe/guards.js';

export interface ProgramArgs {
  mode: 'exchange' | 'exchange-loop' | 'exchange-missing' | 'wait-after-ready' | 'hang-before-ready' | 'guard' | 'sleep' | 'exit-early' | 'fetch-missing';
  /** The rank that misbehaves. */
  victim?: number;
}

const forever = () => new Promise<never>(() => { setInterval(() => {}, 1 << 30); });

export function uniqueIdBlob(): Uint8Array {
  return Uint8Array.from({ length: 128 }, (_, i) => (i * 37 + 11) & 0xff);
}

export default async function program(ctx: RankContext): Promise<unknown> {
  const args = ctx.args as ProgramArgs;
  const victim = args.victim ?? 1;
  switch (args.mode) {
    case 'exchange': {
      ctx.phase('setup');
      if (ctx.rank === 0) ctx.publish('nccl-unique-id', uniqueIdBlob());
      const id = await ctx.fetch('nccl-unique-id');
      const mine = Uint8Array.from({ length: 64 }, (_, i) => (ctx.rank * 64 + i) & 0xff);
      const all = await ctx.allGather('ipc-handle', mine);
      ctx.phase('loaded');
      await ctx.ready();
      return {
        rank: ctx.rank, worldSize: ctx.worldSize, device: ctx.device, pid: process.pid,
        id: Buffer.from(id).toString('hex'), gathered: all.map((b) => Buffer.from(b).toString('hex')),
      };
    }
    case 'exchange-loop': {
      // The same key reused 20 times (the supervisor forgets a delivered exchange) plus one empty blob.
      ctx.phase('exchange');
      const rounds: string[][] = [];
      for (let i = 0; i < 20; i++) {
        const all = await ctx.exchange('layout', Uint8Array.of(ctx.rank, i, ctx.rank * i));
        rounds.push(all.map((b) => Buffer.from(b).toString('hex')));
      }
      const empty = await ctx.exchange('done', new Uint8Array(0));
      return { rank: ctx.rank, rounds, empty: empty.map((b) => b.byteLength) };
    }
    case 'exchange-missing':
      ctx.phase('ipc-exchange');
      if (ctx.rank !== victim) await ctx.exchange('ipc-transport:handles', Uint8Array.of(1, 2, 3));
      await forever();
      return null;
    case 'wait-after-ready':
      await ctx.ready();
      ctx.phase('compute');
      await forever();
      return null;
    case 'fetch-missing':
      ctx.phase('nccl-init');
      if (ctx.rank === victim) await ctx.fetch('nccl-unique-id');
      await forever();
      return null;
    case 'hang-before-ready':
      if (ctx.rank === victim) {
        ctx.phase('load-weights');
        await forever();
      }
      await ctx.ready();
      return null;
    case 'guard':
      if (ctx.rank === victim) {
        ctx.phase('prepare');
        throw new GuardError('DIM_NOT_ALIGNED', 'grouped GEMM: hidden 100 not a positive multiple of 128', 'use a preset shape');
      }
      await ctx.ready();
      await forever();
      return null;
    case 'exit-early':
      await ctx.ready();
      ctx.phase('compute');
      if (ctx.rank === victim) process.exit(0);
      await forever();
      return null;
    case 'sleep':
      // One rank ignores SIGTERM so that the supervisor has to escalate to SIGKILL.
      if (ctx.rank === victim) process.on('SIGTERM', () => {});
      await ctx.ready();
      ctx.phase('serve');
      await forever();
      return null;
  }
}
