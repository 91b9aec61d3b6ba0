// `megamoe make-checkpoint`: writes a synthetic DeepSeek-V4 checkpoint (config.json + safetensors in the
// published layout, MoE tensors only) for tests, benchmarks and demos without the real weights.
import { InvalidArgumentError } from 'commander';
import type { Command } from 'commander';
import { makeCheckpoint, PRESETS } from '../../checkpoint/synthetic.js';
import type { Preset } from '../../checkpoint/synthetic.js';
import type { ExpertDtype } from '../../checkpoint/config.js';
import { intArg, oneOf } from '../args.js';
import { makeModelCheckpoint } from '../../model/checkpoint-writer.js';

const UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1024 ** 2, g: 1e9, gb: 1e9, gib: 1024 ** 3,
};

/** "4GB", "500MiB", "1e9" or "123456" -> bytes. */
export function parseByteSize(text: string): number {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  const value = m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : NaN;
  if (!(value > 0) || !Number.isSafeInteger(value)) throw new InvalidArgumentError(`"${text}" is not a size in bytes (e.g. 4GB, 500MiB, 1000000)`);
  return value;
}

export function register(program: Command): void {
  program
    .command('make-checkpoint')
    .description('write a synthetic DeepSeek-V4 checkpoint (MoE tensors only) in the published safetensors layout')
    .requiredOption('--out <dir>', 'output directory (must not exist or be empty, unless --force)')
    .option('--preset <name>', `model shape: ${PRESETS.join(' | ')}`, oneOf<Preset>('--preset', PRESETS), 'tiny')
    .option('--layers <n>', 'number of MoE layers to write (layers 0..n-1)', intArg('--layers', 1), 1)
    .option('--expert-dtype <dtype>', 'routed experts: fp8 (e4m3 + f32 128x128 scales, Flash-Base) | fp4 (MXFP4, Flash)', oneOf<ExpertDtype>('--expert-dtype', ['fp8', 'fp4']), 'fp8')
    .option('--seed <s>', 'random seed (same seed, same bytes)', intArg('--seed', 0, 0xffffffff), 0)
    .option('--shard-size <bytes>', 'start a new shard past this size (e.g. 4GB); writes model.safetensors.index.json', parseByteSize)
    .option('--force', 'replace a non-empty output directory', false)
    .option('--no-progress', 'no progress bar')
    .option('--whole-model', 'every tensor of the V4 layout (embedding, head, attention, norms, hyper-connections, MoE, MTP; src/model/checkpoint-writer.ts)', false)
    .option('--mtp-layers <n>', 'with --whole-model: MTP layers (default 1)', intArg('--mtp-layers', 0))
    .action(async (opts: { out: string; preset: Preset; layers: number; expertDtype: ExpertDtype; seed: number; shardSize?: number; force: boolean; progress: boolean; wholeModel: boolean; mtpLayers?: number }) => {
      const common = {
        preset: opts.preset, layers: opts.layers, expertDtype: opts.expertDtype, seed: opts.seed, out: opts.out,
        shardSize: opts.shardSize, force: opts.force, progress: opts.progress ? undefined : false,
      };
      const result = opts.wholeModel ? await makeModelCheckpoint({ ...common, mtpLayers: opts.mtpLayers }) : await makeCheckpoint(common);
      const gb = result.bytes / 1e9;
      console.log(`wrote ${result.dir}: ${result.tensors} tensors, ${gb >= 1 ? `${gb.toFixed(2)} GB` : `${(result.bytes / 1e6).toFixed(1)} MB`} in ${result.files.length} files, ${result.seconds.toFixed(2)} s (${result.mbPerSecond.toFixed(0)} MB/s)`);
    });
}
