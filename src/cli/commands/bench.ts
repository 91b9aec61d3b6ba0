// `megamoe bench <what>`: benchmarks (not tests). Each subcommand is a register function from src/bench/
// (staging-routing.ts: staging, routing; moe.ts: moe; model.ts: model; serve.ts: serve); a new one goes into the list below.
import type { Command } from 'commander';
import { checkCreatableDir } from '../../util/writable-dir.js';
import { registerModelBench } from '../../bench/model.js';
import { registerMoeBench } from '../../bench/moe.js';
import { registerServeBench } from '../../bench/serve.js';
import { registerRoutingBench, registerStagingBench } from '../../bench/staging-routing.js';

/** The bench subcommands, in help order. */
const SUBCOMMANDS: ReadonlyArray<(bench: Command) => void> = [
  registerStagingBench,
  registerRoutingBench,
  registerMoeBench,
  registerModelBench,
  registerServeBench,
];

export function register(program: Command): void {
  const bench = program
    .command('bench')
    .description('benchmarks on the GPU: timings, GB/s and TFLOPS against measured device limits (JSON + Markdown into --out)');
  for (const add of SUBCOMMANDS) add(bench);
  // The report folder is checked before a benchmark runs: an unwritable --out fails now, not after minutes of GPU work.
  bench.hook('preAction', (_bench, action) => {
    const out = (action.opts() as { out?: unknown }).out;
    if (typeof out === 'string') checkCreatableDir(out, '--out', 'report folder');
  });
}
